"""Compressed and exact: IVF-PQ shards give a pool of candidates that is re-scored exactly from the
stored fp16 vectors and offsets (query.rescore); their offsets sub-quantizer is refit in place."""
import faiss
import numpy as np
import pytest

from retrieval import build_from_embeddings, open_index
from retrieval.ops.add import add_embeddings
from retrieval.query.rescore import rescore
from retrieval.store.keys import POOL_MIN, pool_size
from retrieval.store.vectors import pq_extras_layout, set_pq_offsets

from ..conftest import unit_vectors

D = 32
MODEL = {"arch": "synthetic", "pretrained": None, "embed_dim": D, "logit_scale": 100.0}


def test_pool_rule():
    assert pool_size(10) == POOL_MIN == 400 and pool_size(50) == 2000 and pool_size(1) == POOL_MIN
    assert pool_size(0) == 0


def test_rescore_equals_brute_force_over_the_pool():
    rng = np.random.default_rng(0)
    shards = [unit_vectors(300, D, 1), unit_vectors(200, D, 2), unit_vectors(50, D, 3)]
    starts = np.array([1000, 0, 5000])                 # not in order: looked up, not assumed
    offsets = [rng.normal(0, 0.1, len(x)).astype(np.float32) for x in shards]
    glob = np.concatenate([st + np.arange(len(x)) for st, x in zip(starts, shards)])
    vec = np.concatenate(shards)
    off = np.concatenate(offsets)
    q = unit_vectors(70, D, 9)                         # more than one query block
    pool = np.stack([rng.choice(len(glob), 40, replace=False) for _ in range(len(q))])
    ids = glob[pool]
    ids[:, -5:] = -1                                   # padding: never returned
    for with_offsets in (False, True):
        s, got = rescore(q, ids, 10, starts, lambda i, rows: shards[i][rows].astype(np.float32),
                         lambda i, rows: offsets[i][rows] if with_offsets else None)
        for j in range(len(q)):
            cand = pool[j, :-5]
            exact = vec[cand] @ q[j] - (off[cand] if with_offsets else 0)
            best = np.argsort(-exact, kind="stable")[:10]
            assert np.array_equal(got[j], glob[cand[best]]), j
            assert np.allclose(s[j], exact[best], atol=1e-5)


def test_a_block_without_candidates_returns_none():
    """A query block whose pools are all padding (-1) gives -1 ids and -inf scores, not an error."""
    q = unit_vectors(3, D, 4)
    s, got = rescore(q, np.full((3, 40), -1), 10, np.array([0]), lambda i, rows: np.zeros((len(rows), D), np.float32),
                     lambda i, rows: None)
    assert (got == -1).all() and np.isneginf(s).all()


def _ivfpq(x: np.ndarray, nlist: int = 8, m: int = 17):
    dim = D // (m - 1) * m
    quant = faiss.IndexFlatIP(dim)
    ix = faiss.IndexIVFPQ(quant, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    xx = np.zeros((len(x), dim), np.float32)
    xx[:, :D] = x
    ix.train(xx)
    ix.add(xx)
    return ix, dim


def test_the_offsets_sub_quantizer_is_refit_in_place():
    x = unit_vectors(4000, D, 4)
    ix, dim = _ivfpq(x)
    assert pq_extras_layout(ix, D) and not pq_extras_layout(ix, D - 2)
    before = faiss.rev_swig_ptr(ix.pq.centroids.data(), ix.pq.M * 256 * ix.pq.dsub).copy()
    cols = np.stack([np.random.default_rng(1).normal(0, 0.2, len(x)), np.linspace(-0.1, 0.1, len(x))], 1)
    assert set_pq_offsets(ix, cols.astype(np.float32), D)
    after = faiss.rev_swig_ptr(ix.pq.centroids.data(), ix.pq.M * 256 * ix.pq.dsub)
    cut = (ix.pq.M - 1) * 256 * ix.pq.dsub
    assert np.array_equal(before[:cut], after[:cut])           # the items' sub-quantizers are untouched
    q = np.zeros((1, dim), np.float32)
    q[0, D] = 1.0                                              # a query that reads the first offsets coordinate only
    s, ids = ix.search(q, 4000, params=faiss.SearchParametersIVF(nprobe=8))
    approx = np.empty(len(x), np.float32)
    approx[ids[0]] = s[0]
    assert np.corrcoef(approx, cols[:, 0])[0, 1] > 0.99       # the codes now hold the offsets
    assert np.quantile(np.abs(approx - cols[:, 0]), 0.99) < 0.05


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pq")
    img, txt = unit_vectors(12_000, D, 1), unit_vectors(12_000, D, 2)
    rows = [{"key": f"k{i}", "part": i % 5} for i in range(len(img))]
    for name, key in (("pq", "IVF32,PQ17"), ("flat", "Flat")):
        build_from_embeddings(tmp / name, img, txt, MODEL, rows, index_key=key, shard_size=5_000)
    more = [{"key": f"n{i}", "part": 9} for i in range(300)]
    for name in ("pq", "flat"):
        add_embeddings(tmp / name, unit_vectors(300, D, 5), unit_vectors(300, D, 6), more)
    return tmp


@pytest.mark.parametrize("kw", [dict(), dict(rerank="bsap"), dict(rerank="nnn"), dict(where="part = 2"),
                                dict(target="text"), dict(rerank="bsap", where="part < 3")])
def test_compressed_results_are_exact_scores_with_high_recall(folders, kw):
    pq = open_index(folders / "pq", backend="faiss-cpu")
    exact = open_index(folders / "flat", backend="faiss-cpu")
    assert pq._snap.shard_set.compressed("image") and not exact._snap.shard_set.compressed("image")
    q = unit_vectors(40, D, 7)
    s, ids = pq.search(q, 10, **kw)
    ws, wi = exact.search(q, 10, **kw)
    assert (ids >= 0).all()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), wi.tolist())])
    assert recall >= 0.95, recall
    for j in range(len(q)):                  # every score returned is the exact one of its id
        exact_of = dict(zip(wi[j].tolist(), ws[j].tolist()))
        for i, v in zip(ids[j].tolist(), s[j].tolist()):
            if i in exact_of:
                assert abs(exact_of[i] - v) < 1e-4
        assert (np.diff(s[j]) <= 1e-6).all()


def test_offsets_grid_bounds_every_value_by_half_a_step():
    from retrieval.store.vectors import offsets_grid

    rng = np.random.default_rng(0)
    cols = np.stack([rng.standard_t(3, 20_000) * 0.1, rng.normal(0, 0.01, 20_000)], 1).astype(np.float32)
    grid, code = offsets_grid(cols, 256)
    na, nb = (len(np.unique(grid[:, j])) for j in range(2))
    assert na * nb <= 256 and na > nb                    # the wide (heavy-tailed) axis gets the levels
    span = cols.max(0) - cols.min(0)
    err = np.abs(grid[code] - cols)
    assert err[:, 0].max() <= span[0] / na / 2 + 1e-6 and err[:, 1].max() <= span[1] / nb / 2 + 1e-6
    zeros, code = offsets_grid(np.zeros((50, 2), np.float32), 256)   # before the offsets exist
    assert np.abs(zeros[code]).max() < 1e-6


def test_bias_recomputation_and_compaction_keep_compressed_results_exact(tmp_path):
    from retrieval.ops import compact
    from retrieval.ops.bias import compute_biases

    img, txt = unit_vectors(6_000, D, 11), unit_vectors(6_000, D, 12)
    rows = [{"key": f"k{i}"} for i in range(len(img))]
    for name, key in (("pq", "IVF16,PQ17"), ("flat", "Flat")):
        build_from_embeddings(tmp_path / name, img, txt, MODEL, rows, index_key=key, shard_size=2_000)
        add_embeddings(tmp_path / name, unit_vectors(100, D, 13), unit_vectors(100, D, 14),
                       [{"key": f"n{i}"} for i in range(100)])
    q = unit_vectors(30, D, 15)

    def same():
        for kw in (dict(rerank="bsap"), dict(rerank="nnn"), dict()):
            s, ids = open_index(tmp_path / "pq", backend="faiss-cpu").search(q, 10, **kw)
            ws, wi = open_index(tmp_path / "flat", backend="faiss-cpu").search(q, 10, **kw)
            hits = [len(set(a) & set(b)) for a, b in zip(ids.tolist(), wi.tolist())]
            assert np.mean(hits) / 10 >= 0.95, kw
            for j in range(len(q)):
                w = dict(zip(wi[j].tolist(), ws[j].tolist()))
                assert all(abs(w[i] - v) < 1e-4 for i, v in zip(ids[j].tolist(), s[j].tolist()) if i in w)

    same()
    for name in ("pq", "flat"):
        compute_biases(tmp_path / name, bank="corpus", seed=5)   # new offsets: the PQ sub-codes rewritten
    same()
    gone = [f"k{i}" for i in range(0, 6_000, 3)]            # a third of the rows deleted: filtered pools
    for name in ("pq", "flat"):
        assert len(open_index(tmp_path / name).delete(gone).found) == len(gone)
    same()
    ids = open_index(tmp_path / "pq", backend="faiss-cpu").search(q, 10, rerank="bsap")[1]
    assert not set(ids.ravel().tolist()) & set(range(0, 6_000, 3))   # global ids of the deleted keys
    for name in ("pq", "flat"):
        compact(tmp_path / name, threshold=0.0, min_rows=1000)
    same()
