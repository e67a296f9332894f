"""The coarse search of a few queries from an fp16 copy of the centroids (``query.probe``): the flat
search's lists and scores, proved or searched again; batches and small quantizers stay flat."""
import faiss
import numpy as np
import pytest

from retrieval.query import probe
from retrieval.query.coarse import quantizer_groups
from retrieval.query.probe import EXTRA, FP16_MAX_QUERIES, FP16_MIN_LISTS, CoarseSearch, error_bound, fp16_pays

from ..conftest import ivf_shards, unit_vectors


def _flat(centroids: np.ndarray):
    ix = faiss.IndexFlatIP(centroids.shape[1])
    ix.add(centroids)
    return ix


def _one_by_one(flat, q: np.ndarray, nprobe: int):
    """The flat search of each query alone (faiss's exact inner products, not a batch's BLAS)."""
    found = [flat.search(q[i:i + 1], nprobe) for i in range(len(q))]
    return np.concatenate([s for s, _ in found]), np.concatenate([i for _, i in found])


class _Counting:
    """A flat index that counts the queries it is asked."""

    def __init__(self, flat):
        self.inner, self.ntotal, self.d, self.asked = flat, flat.ntotal, flat.d, 0

    def search(self, q, k):
        self.asked += len(q)
        return self.inner.search(q, k)


def test_fp16_pays_rule():
    assert fp16_pays(FP16_MIN_LISTS, 1, 2) and fp16_pays(8192, FP16_MAX_QUERIES, 32)
    assert not fp16_pays(FP16_MIN_LISTS - 1, 1, 2)            # small: the flat scan stays in cache
    assert not fp16_pays(8192, FP16_MAX_QUERIES + 1, 2)      # a batch: one BLAS product
    assert not fp16_pays(8192, 0, 2)
    assert not fp16_pays(FP16_MIN_LISTS, 1, FP16_MIN_LISTS - EXTRA)   # nothing left out to prove


def test_error_bound_covers_every_score():
    c = unit_vectors(3000, 64, 1) * np.float32(3.0)
    decoded = c.astype(np.float16).astype(np.float32)
    err = error_bound(c, decoded)
    q = unit_vectors(200, 64, 2) * np.float32(7.0)
    gap = np.abs(q @ c.T - q @ decoded.T)
    assert gap.max() > 0 and np.all(gap <= err * np.linalg.norm(q, axis=1)[:, None])
    assert error_bound(c, c) > 0                             # float sums are bounded even without rounding


@pytest.mark.parametrize("nprobe", [1, 2, 8, 40])
@pytest.mark.parametrize("d", [48, 36])   # 36: the copy zero-padded to whole SIMD blocks of 16
def test_few_queries_get_the_flat_search_lists_and_scores(nprobe, d):
    c = unit_vectors(FP16_MIN_LISTS, d, 3)
    flat = _flat(c)
    search = CoarseSearch(flat)
    assert search.half is not None and search.width == 48
    q = unit_vectors(64, d, 4)
    want = _one_by_one(flat, q, nprobe)
    for n in (1, 5, FP16_MAX_QUERIES):
        got = [search.search(q[i:i + n], nprobe) for i in range(0, len(q), n)]
        assert np.array_equal(np.concatenate([i for _, i in got]), want[1])
        assert np.array_equal(np.concatenate([s for s, _ in got]), want[0])   # bit for bit


def test_near_ties_the_copy_cannot_order_are_searched_flat():
    rng = np.random.default_rng(5)
    base = unit_vectors(1, 48, 6)
    c = (base + rng.standard_normal((FP16_MIN_LISTS, 48)).astype(np.float32) * 1e-5).astype(np.float32)
    flat = _flat(c)
    search = CoarseSearch(flat)
    counting = search.flat = _Counting(flat)
    q = unit_vectors(20, 48, 7)
    want = _one_by_one(flat, q, 3)
    half = search.half.search(q, 3 + EXTRA)[1][:, :3]
    assert not np.array_equal(np.sort(half, 1), np.sort(want[1], 1))   # the fp16 copy alone orders them wrong
    got = np.concatenate([search.search(q[i:i + 1], 3)[1] for i in range(len(q))])
    assert np.array_equal(got, want[1]) and counting.asked == len(q)  # every one unproved: searched flat


def test_batches_and_small_quantizers_stay_flat():
    c = unit_vectors(FP16_MIN_LISTS, 32, 8)
    search = CoarseSearch(_flat(c))
    counting = search.flat = _Counting(search.flat)
    q = unit_vectors(FP16_MAX_QUERIES + 1, 32, 9)
    search.search(q, 4)
    search.search(q[:1], 4)
    assert counting.asked == FP16_MAX_QUERIES + 1            # the batch, not the single query
    small = CoarseSearch(_flat(c[:FP16_MIN_LISTS - 1]))
    assert small.half is None and small.index(4) is small.flat
    l2 = faiss.IndexFlatL2(32)
    l2.add(c)
    assert CoarseSearch(l2).half is None                     # the proof is for inner products
    generic = faiss.IndexFlat(32, faiss.METRIC_INNER_PRODUCT)   # a plain IndexFlat by inner product
    generic.add(c)
    found = CoarseSearch(generic)
    assert found.half is not None
    assert np.array_equal(found.search(q[:1], 4)[1], generic.search(q[:1], 4)[1])


@pytest.mark.parametrize("d", [32, 20])
def test_faiss_index_form_refines_to_the_flat_lists(d):
    c = unit_vectors(FP16_MIN_LISTS, d, 10)
    flat = _flat(c)
    search = CoarseSearch(flat)
    refine = search.index(2)
    assert isinstance(refine, faiss.IndexRefine) and refine.k_factor * 2 == 2 + EXTRA
    q = unit_vectors(30, d, 11)
    want = _one_by_one(flat, q, 2)
    got = [refine.search(q[i:i + 1], 2) for i in range(len(q))]
    assert np.array_equal(np.concatenate([i for _, i in got]), want[1])
    assert np.array_equal(np.concatenate([s for s, _ in got]), want[0])


def test_a_group_over_many_lists_answers_as_with_the_flat_quantizer(monkeypatch):
    monkeypatch.setattr(probe, "FP16_MIN_LISTS", 64)
    x = unit_vectors(6000, 32, 12)
    quantizer = _flat(unit_vectors(256, 32, 13))
    trained = faiss.IndexIVFScalarQuantizer(quantizer, 32, 256, faiss.ScalarQuantizer.QT_fp16,
                                            faiss.METRIC_INNER_PRODUCT, False)
    trained.is_trained = True
    shards = ivf_shards(trained, x, ((0, 2000), (2000, 3500), (3500, 6000)), 6)
    starts = [0, 2000, 3500]
    group = quantizer_groups(shards, starts)[0]
    assert group.coarse.half is not None and isinstance(group.joined().quantizer, faiss.IndexRefine)
    q = unit_vectors(12, 32, 14)
    want_s, want_i = [], []
    for i in range(len(q)):                                   # each shard alone, its own flat quantizer
        parts = [ix.search(q[i:i + 1], 10) for ix in shards]
        s = np.concatenate([p[0] for p in parts], 1)
        ids = np.concatenate([p[1] + st for p, st in zip(parts, starts)], 1)
        top = np.argsort(-s, 1, kind="stable")[:, :10]
        want_s.append(np.take_along_axis(s, top, 1))
        want_i.append(np.take_along_axis(ids, top, 1))
    for i in range(len(q)):
        s, ids = group.search_all(q[i:i + 1], 10)
        assert np.array_equal(np.sort(ids), np.sort(want_i[i])) and np.allclose(s, want_s[i])
        parts = group.search(q[i:i + 1], 10, [None] * 3, [None] * 3, [2000, 1500, 2500])
        assert [np.array_equal(p[1], ix.search(q[i:i + 1], 10)[1]) for p, ix in zip(parts, shards)] == [True] * 3
