"""The IVF add's assignment and the tuning's top-k through torch (store.assign): the index faiss's own
add builds, the neighbours faiss's knn finds; faiss itself where the kernel is not faster or the
index is not a plain IVF."""
import faiss
import numpy as np
import pytest

from retrieval.store import assign as assign_mod
from retrieval.store.assign import assign, ivf_add, top_k

from tests.conftest import unit_vectors


@pytest.fixture
def forced(monkeypatch):
    """The torch path whatever this CPU (its products are float32 on any CPU: the mode flag only
    changes the kernel where ``mode_is_fp32``; here it may round, so the tests allow near-ties)."""
    import torch  # noqa: F401  (loaded, as in a build)

    monkeypatch.setattr(assign_mod.bf16, "torch_fp32_faster", lambda: True)
    monkeypatch.setattr(assign_mod.bf16, "matmul_math", lambda torch, p: _null())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _trained(d: int = 48, nlist: int = 32, key: str = "Flat"):
    x = unit_vectors(6000, d, 1)
    index = faiss.index_factory(d, f"IVF{nlist},{key}", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    return index, x


def _gap_ok(x: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """Rows whose two best centroids differ by more than float32 reordering could move."""
    s = np.sort(x @ cent.T, axis=1)
    return s[:, -1] - s[:, -2] > 1e-5


def test_assign_is_faiss_quantizer_search(forced):
    index, x = _trained()
    cent = faiss.downcast_index(index.quantizer).reconstruct_n(0, index.nlist)
    got = assign(cent, x, block=700)
    _, want = index.quantizer.search(x, 1)
    clear = _gap_ok(x, cent)
    assert clear.mean() > 0.99 and np.array_equal(got[clear], want.ravel()[clear])


@pytest.mark.parametrize("key", ["Flat", "SQfp16"])
def test_ivf_add_builds_the_index_add_builds(forced, key):
    index, x = _trained(key=key)
    other = faiss.clone_index(index)
    ivf_add(index, x)
    other.add(x)
    a, b = faiss.extract_index_ivf(index), faiss.extract_index_ivf(other)
    assert a.ntotal == b.ntotal == len(x)
    cent = faiss.downcast_index(a.quantizer).reconstruct_n(0, a.nlist)
    clear = _gap_ok(x, cent)
    lists = lambda ix: {i: set(faiss.rev_swig_ptr(ix.invlists.get_ids(i), ix.invlists.list_size(i)).tolist())
                        for i in range(ix.nlist)}
    la, lb = lists(a), lists(b)
    for i in range(a.nlist):   # the same rows in each list, but near-ties
        assert {r for r in la[i] if clear[r]} == {r for r in lb[i] if clear[r]}
    a.nprobe = b.nprobe = 4
    q = unit_vectors(50, x.shape[1], 9)
    assert np.array_equal(index.search(q, 5)[1][:, 0], other.search(q, 5)[1][:, 0])


def test_small_adds_and_other_indexes_go_through_faiss(forced, monkeypatch):
    called = []
    monkeypatch.setattr(assign_mod, "assign", lambda c, x: called.append(len(x)) or np.zeros(len(x), np.int64))
    index, x = _trained()
    ivf_add(index, x[:100])                          # below MIN_ROWS
    hnsw = faiss.IndexHNSWFlat(48, 8, faiss.METRIC_INNER_PRODUCT)
    ivf_add(hnsw, x)
    pre = faiss.index_factory(48, "PCA32,IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    pre.train(x)
    ivf_add(pre, x)
    assert called == [] and index.ntotal == 100 and hnsw.ntotal == pre.ntotal == len(x)
    ivf_add(index, x)
    assert called == [len(x)]


def test_top_k_is_faiss_knn(forced):
    x, q = unit_vectors(5000, 48, 3), unit_vectors(40, 48, 4)
    s, ids = top_k(q, x, 10)
    ws, wi = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert np.allclose(s, ws, atol=1e-5) and (ids == wi).mean() > 0.99
    assert top_k(q, x[:5], 10) is None              # fewer rows than k: faiss pads


def test_without_the_faster_kernel_faiss_does_both(monkeypatch):
    monkeypatch.setattr(assign_mod.bf16, "torch_fp32_faster", lambda: False)
    assert top_k(unit_vectors(3, 8, 1), unit_vectors(50, 8, 2), 5) is None
    index, x = _trained()
    ivf_add(index, x)
    assert index.ntotal == len(x)
