"""IVF indexes on one quantizer searched as one (query.stacked): the stacked lists' one search gives
the ids and scores of faiss's IndexShardsIVF over the same indexes, for every index type with a
shell, with global ids from starts or from a table; other types fall back to IndexShardsIVF."""
import faiss
import numpy as np
import pytest

from retrieval.query.coarse import ShardsIVF, one_index
from retrieval.query.stacked import StackedIVF, empty_like, stack

from ..conftest import unit_vectors

D = 32


def _members(key: str, by_residual=None, sizes=(700, 1, 0, 1300)):
    x = unit_vectors(sum(sizes) + 2000, D, 7)
    trained = faiss.index_factory(D, key, faiss.METRIC_INNER_PRODUCT)
    trained.train(x[-2000:])
    if by_residual is not None:
        faiss.extract_index_ivf(trained).by_residual = by_residual
    out, lo = [], 0
    for n in sizes:
        ix = faiss.clone_index(trained)
        if n:
            ix.add(x[lo:lo + n])
        lo += n
        out.append(ix)   # clone_index gives the downcast type, owned (a second proxy would not keep it alive)
    return out


@pytest.mark.parametrize("key,by_residual", [("IVF16,SQfp16", False), ("IVF16,SQfp16", True), ("IVF16,SQ8", None),
                                             ("IVF16,PQ8", None), ("IVF16,Flat", None)])
@pytest.mark.parametrize("nprobe", [1, 3, 16])
def test_stacked_search_equals_faiss_joined_search(key, by_residual, nprobe):
    ivfs = _members(key, by_residual)
    for x in ivfs:
        x.nprobe = nprobe                                           # faiss's joined search takes theirs
    starts = [0, 700, 701, 701]
    table = np.arange(1300, dtype=np.int64)[::-1] + 5000           # a member numbered by a table
    ids = starts[:3] + [table]
    st = stack(ivfs, ids, nprobe)
    assert st is not None and st.rows == 2001
    want = ShardsIVF(ivfs, ids, nprobe)
    q = unit_vectors(30, D, 8)
    for k in (1, 10, 2500):                                         # 2,500 > rows: -1 past the rows found
        s, got = st.search(q, k)
        ws, wi = want.search(q, k)
        assert got.shape == (30, k) and np.array_equal(np.sort(got, 1), np.sort(wi, 1))
        assert np.allclose(s, ws, atol=1e-5)
        found = got >= 0
        assert (np.isfinite(s) == found).all() or (s[~found] < -1e30).all()
        assert all(len(set(r[r >= 0])) == int((r >= 0).sum()) for r in got)   # no id twice
    assert set(np.unique(got[got >= 0])) <= set(range(701)) | set(table.tolist())


def test_one_index_uses_the_stack_and_falls_back_for_other_types():
    ivfs = _members("IVF16,PQ8", None, sizes=(500, 500))            # compact codes: stacked
    for x in ivfs:
        x.nprobe = 2
    assert isinstance(one_index(ivfs, [0, 500]), StackedIVF)
    ivfs[1].nprobe = 3
    assert one_index(ivfs, [0, 500]) is None                       # nprobe differ: no one search
    assert isinstance(one_index(ivfs, [0, 500], nprobe=3), StackedIVF)
    fp16 = _members("IVF16,SQfp16", False, sizes=(500, 500))       # fp16 vectors scan in place, shard by shard
    assert stack(fp16, [0, 500], 1) is not None and isinstance(one_index(fp16, [0, 500]), ShardsIVF)
    fast = _members("IVF16,PQ8x4fs", None, sizes=(500, 500))
    assert empty_like(fast[0]) is None and stack(fast, [0, 500], 4) is None
    assert one_index(fast, [0, 500], nprobe=4) is None             # IndexShardsIVF takes the indexes' nprobe
    for x in fast:
        x.nprobe = 4
    joined = one_index(fast, [0, 500])
    assert isinstance(joined, ShardsIVF)
    q = unit_vectors(5, D, 9)
    s, ids = joined.search(q, 10)
    assert ids.shape == (5, 10) and ((ids >= 0) & (ids < 1000)).all()


def test_list_ids_are_gathered_once_and_global():
    ivfs = _members("IVF16,SQfp16", False, sizes=(300, 200))
    st = stack(ivfs, [10, 1000], 1)
    lst = int(np.argmax([ivfs[0].invlists.list_size(i) + ivfs[1].invlists.list_size(i) for i in range(16)]))
    ids = st.list_ids(lst)
    assert st.list_ids(lst) is ids
    n0 = ivfs[0].invlists.list_size(lst)
    assert len(ids) == n0 + ivfs[1].invlists.list_size(lst)
    assert ((ids[:n0] >= 10) & (ids[:n0] < 310)).all() and ((ids[n0:] >= 1000) & (ids[n0:] < 1200)).all()
