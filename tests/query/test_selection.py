"""Deleted items are never returned, by any path or method; filters keep top-k full; duplicates collapse."""
import numpy as np
import pytest

from retrieval import build_from_embeddings, open_index
from retrieval.query.filters import FilterError
from tests.conftest import unit_vectors

N = 5000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("sel") / "idx"
    x, t = unit_vectors(N, 16, 0), unit_vectors(N, 16, 1)
    rows = [{"key": f"k{i}", "image_path": "", "caption": f"c{i}", "grp": i % 100, "year": 2000 + i % 25}
            for i in range(N)]
    build_from_embeddings(out, x, t, {"arch": "synthetic", "logit_scale": 50.0}, rows, shard_size=2000,
                          index_key="IVF16,Flat")  # 3 IVF shards (the last one 1000 rows)
    return out


@pytest.mark.parametrize("backend", ["faiss-cpu", "torch"])
def test_deleted_items_are_absent_from_every_path(folder, tmp_path, backend):
    import shutil

    work = tmp_path / "w"
    shutil.copytree(folder, work)
    idx = open_index(work, backend=backend, search_params="nprobe=2")
    q = unit_vectors(12, 16, 2)
    top = idx.search(q, 30)[1]
    gone = np.unique(top[:, :10])                         # the best results of every query
    found = idx.delete([f"k{i}" for i in gone])
    assert len(found.found) == len(gone) and not found.missing
    for kw in ({}, {"rerank": "bsap"}, {"rerank": "nnn"}, {"rerank": "hybrid"}, {"rerank": "nnn", "candidates": 50},
               {"rerank": "clip", "candidates": 40}, {"target": "text"}, {"where": "grp < 50"}, {"dedup": 0.99}):
        s, ids = idx.search(q, 25, **kw)
        assert not np.isin(ids, gone).any(), kw
        assert (ids >= 0).all() and all(len(set(r)) == 25 for r in ids.tolist()), kw   # still full
    assert len(idx) == N - len(gone) and not np.isin(idx.ids(), gone).any()
    with pytest.raises(IndexError, match="deleted"):
        idx.metadata([int(gone[0])])
    assert not idx.is_live([int(gone[0])])[0] and idx.is_live([int(np.setdiff1d(np.arange(N), gone)[0])])[0]
    reopened = open_index(work, backend=backend, search_params="nprobe=2")  # what is on disk
    assert reopened.search(q, 10)[1].tolist() == idx.search(q, 10)[1].tolist()


@pytest.mark.parametrize("where,fraction", [("grp = 7", 0.01), ("grp < 10", 0.1), ("year >= 2013", 0.48)])
def test_filtered_search_is_full_and_exact_enough(folder, where, fraction):
    idx = open_index(folder)
    q = unit_vectors(30, 16, 3)
    s, ids = idx.search(q, 10, where=where)
    meta = idx.metadata(ids.ravel())
    grp = np.array([m["grp"] for m in meta])
    year = np.array([m["year"] for m in meta])
    assert ids.shape == (30, 10) and (ids >= 0).all()
    assert eval(where.replace("=", "==").replace(">==", ">="), {"grp": grp, "year": year}).all()
    match = np.array([eval(where.replace("=", "==").replace(">==", ">="), {"grp": i % 100, "year": 2000 + i % 25})
                      for i in range(N)])
    assert abs(match.mean() - fraction) < 0.01
    x = idx.embeddings(np.arange(N), "image")
    truth = np.argsort(-np.where(match, q @ x.T, -np.inf), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())])
    assert recall >= 0.95, recall


def test_bad_filters_are_one_line_errors(folder):
    idx = open_index(folder)
    q = unit_vectors(1, 16, 4)
    for where, msg in (("nope > 1", "unknown column 'nope'"), ("grp >", "bad where"), ("grp > (SELECT 1)", "subqueries"),
                       ("1=1) UNION SELECT 0, 0 --", "bad where"), ("grp > 1 FROM meta", "one boolean expression"),
                       ("", "empty")):
        with pytest.raises(FilterError, match=msg):
            idx.search(q, 5, where=where)


def test_dedup_keeps_the_best_of_each_group_and_still_returns_k(tmp_path):
    base = unit_vectors(40, 16, 5)
    rng = np.random.default_rng(6)
    x = np.concatenate([base] + [base + 0.01 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(4)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)                            # 40 groups of 5 near-copies
    build_from_embeddings(tmp_path / "d", x, x, {"arch": "synthetic"}, bias_bank=None)
    idx = open_index(tmp_path / "d")
    s, ids = idx.search(base[:3], 10)
    assert len(np.unique(ids[0] % 40)) < 10                                  # without dedup: copies crowd in
    s, ids = idx.search(base[:3], 10, dedup=0.94)
    assert (ids >= 0).all() and all(len(np.unique(r % 40)) == 10 for r in ids)  # one per group, still 10
    assert (ids[:, 0] % 40 == np.arange(3)).all()
    from retrieval.methods.dedup import keep_mask

    assert keep_mask(x[[0, 40, 1]], np.array([0, 40, 1])).tolist() == [True, False, True]
    assert keep_mask(x[[0, 0]], np.array([5, 5]), 0.999).tolist() == [True, False]   # repeated ids
