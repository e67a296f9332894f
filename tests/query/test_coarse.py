"""Shards searched together: those that share a coarse quantizer with one coarse assignment
(``query.coarse``; found by their centroids), the small Flat ones as one matrix
(``query.flat_group``); every answer (plain, BSAP, NNN, a filter, appended shards) equals the
shard-by-shard search."""
import faiss
import numpy as np
import pytest

from retrieval import build_from_embeddings, open_index
from retrieval.ops.add import add_embeddings
from retrieval.query.coarse import quantizer_groups
from retrieval.query.delta import delta_joined, folded, search_delta
from retrieval.query.faiss_search import exact_in_lists, search_shard
from retrieval.query.joined import JOINED_MAX_QUERIES, joined_pays
from retrieval.query.flat_group import MAX_ROWS, SMALL_ROWS, FlatGroup, small_flat
from retrieval.query.shards import ShardSet

from ..conftest import ivf_shards, unit_vectors

MODEL = {"arch": "synthetic", "pretrained": None, "embed_dim": 32, "logit_scale": 100.0}
N, SHARD = 4000, 1000


def _ivf(train: np.ndarray, nlist: int = 16):
    ix = faiss.index_factory(train.shape[1], f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
    ix.train(train)
    return ix


def test_groups_are_the_indexes_with_equal_centroids():
    x = unit_vectors(2000, 32, 0)
    trained = _ivf(x)
    a, b = faiss.clone_index(trained), faiss.clone_index(trained)
    a.add(x[:500])
    b.add(x[500:900])
    other = _ivf(unit_vectors(2000, 32, 1))          # trained apart: other centroids
    flat = faiss.IndexFlatIP(32)
    groups = quantizer_groups([a, None, other, flat, b], [0, 10, 20, 30, 40])
    assert [g.positions for g in groups] == [[0, 4], [2]]
    assert [g.positions for g in quantizer_groups([a, other], [0, 500])] == [[0], [1]]


def test_group_search_equals_each_shard_alone():
    x = unit_vectors(3000, 32, 2)
    trained = _ivf(x)
    shards = ivf_shards(trained, x, ((0, 1000), (1000, 1700), (1700, 3000)), 3)
    shards[1].nprobe = 5                               # a shard's own nprobe is kept
    starts = np.array([0, 1000, 1700])
    group = quantizer_groups(shards, starts + 50)[0]   # global ids: each shard's start added
    q = unit_vectors(40, 32, 3)
    rng = np.random.default_rng(0)
    masks = [None, rng.random(700) < 0.3, np.zeros(1300, bool)]
    allowed = [1000, int(masks[1].sum()), 0]
    got = group.search(q, 10, masks, [None] * 3, allowed)
    for ix, mask, a, (s, ids) in zip(shards, masks, allowed, got):
        ws, wi = search_shard(ix, q, 10, mask, None, a)
        assert np.array_equal(ids, wi) and np.allclose(s, ws)
    assert got[2][1].shape == (40, 0)
    assert group.search_all(q, 10) is None      # faiss's joined search takes one nprobe
    shards[1].nprobe = 3
    group = quantizer_groups(shards, starts + 50)[0]
    s, ids = group.search_all(q, 10)
    parts = [search_shard(ix, q, 10) for ix in shards]
    allv = np.concatenate([p[0] for p in parts], 1)
    alli = np.concatenate([p[1] + st + 50 for p, st in zip(parts, starts)], 1)
    order = np.argsort(-allv, 1, kind="stable")[:, :10]
    assert np.array_equal(np.sort(ids, 1), np.sort(np.take_along_axis(alli, order, 1), 1))
    assert np.allclose(s, np.take_along_axis(allv, order, 1))
    s, ids = group.search_all(q, 2000)                 # more than 3 of 16 lists hold: searched again, in full
    assert (ids >= 0).all() and all(len(set(r)) == 2000 for r in ids.tolist())
    assert ((ids >= 50) & (ids < 3050)).all() and (np.diff(s, axis=1) <= 1e-6).all()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("coarse") / "idx"
    x, t = unit_vectors(N, 32, 4), unit_vectors(N, 32, 5)
    rows = [{"key": f"k{i}", "part": i % 5} for i in range(N)]
    build_from_embeddings(out, x, t, MODEL, rows, shard_size=SHARD, index_key="IVF16,Flat")
    add_embeddings(out, unit_vectors(1500, 32, 6), unit_vectors(1500, 32, 7),
                   [{"key": f"a{i}", "part": i % 5} for i in range(1500)])     # two appended shards
    for j, m in enumerate((10, 12)):                                         # and two small Flat ones
        add_embeddings(out, unit_vectors(m, 32, 8 + j), unit_vectors(m, 32, 18 + j),
                       [{"key": f"b{j}_{i}", "part": i % 5} for i in range(m)])
    return out


def test_appended_shards_join_the_group_and_answers_are_unchanged(folder, monkeypatch):
    # every list probed (nprobe = nlist): the joined searches must give exactly the shard-by-shard answers,
    # the small Flat shards' rows (in one search with the IVF shards when there is no filter) included
    idx = open_index(folder, backend="faiss-cpu", search_params="nprobe=16")
    shards = idx._snap.shard_set
    groups = shards.coarse_groups("image")
    indexed = [i for i in range(len(shards.shards)) if shards.has_index(i, "image")]
    assert len(shards.shards) == 8 and len(groups) == 1 and groups[0].positions == indexed == list(range(6))
    assert shards.flat_group("image").positions == [6, 7]
    q = np.concatenate([unit_vectors(25, 32, 10), unit_vectors(4, 32, 8)[:2]])   # two queries on Flat rows
    asked = [dict(), dict(rerank="bsap"), dict(rerank="nnn"), dict(where="part = 2"), dict(target="text"),
             dict(rerank="bsap", where="part < 3"), dict(k=2000)]
    def by_eight(index, kw):   # a few queries a call: what the joined searches take (``joined_pays``)
        kw = dict(kw)
        k = kw.pop("k", 10)
        got = [index.search(q[i:i + 8], k, **kw) for i in range(0, len(q), 8)]
        return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])

    grouped = [by_eight(idx, kw) for kw in asked]
    assert {int(i) for i in grouped[0][1][-2:, 0]} <= set(range(4000 + 1500, 4000 + 1500 + 22))   # found
    monkeypatch.setattr(ShardSet, "coarse_groups", lambda self, modality: [])
    monkeypatch.setattr(ShardSet, "flat_group", lambda self, modality: None)
    alone = open_index(folder, backend="faiss-cpu", search_params="nprobe=16")
    for kw, (s, ids) in zip(asked, grouped):
        ws, wi = by_eight(alone, kw)
        assert np.array_equal(np.sort(ids, 1), np.sort(wi, 1)), kw
        assert np.allclose(s, ws, atol=1e-5), kw


def test_the_tuned_search_finds_the_appended_rows(folder):
    idx = open_index(folder, backend="faiss-cpu")            # the build's tuned nprobe
    q = unit_vectors(10, 32, 8)                               # the first small append's own rows
    ids = idx.search(q, 1)[1][:, 0]
    assert (ids == 4000 + 1500 + np.arange(10)).mean() >= 0.9
    s, ids = idx.search(q, 5000)                              # more than the probed lists hold: searched again
    assert (ids >= 0).all() and all(len(set(r)) == 5000 for r in ids.tolist()) and (np.diff(s, axis=1) <= 1e-6).all()


def test_small_flat_rule():
    assert small_flat([100, 50, 20_000, 30], [True, False, True, True]) == [0, 3]
    assert small_flat([0, 10], [True, True]) == [1]
    full = MAX_ROWS // SMALL_ROWS                        # shards of SMALL_ROWS that fit under the cap
    assert small_flat([SMALL_ROWS] * (full + 1) + [5], [True] * (full + 2)) == list(range(full)) + [full + 1]


def test_flat_group_equals_each_scan():
    parts = [unit_vectors(n, 32, 30 + n).astype(np.float16) for n in (40, 7, 25)]
    group = FlatGroup([1, 2, 4], parts, [100, 140, 500])
    q = unit_vectors(6, 32, 40)
    offsets = [np.linspace(0, 0.3, len(p)).astype(np.float32) for p in parts]
    masks = [None, np.zeros(7, bool), np.arange(25) % 3 == 0]
    s, ids = group.search(q, 10, group.offsets(offsets), group.allowed(masks))
    x = np.concatenate([parts[0], parts[2][masks[2]]]).astype(np.float32)
    want_ids = np.concatenate([np.arange(40) + 100, np.flatnonzero(masks[2]) + 500])
    sc = q @ x.T - np.concatenate([offsets[0], offsets[2][masks[2]]])
    top = np.argsort(-sc, 1)[:, :10]
    assert np.array_equal(ids, want_ids[top]) and np.allclose(s, np.take_along_axis(sc, top, 1), atol=1e-6)
    assert group.search(q, 100, None, np.zeros(0, np.int64))[1].shape == (6, 0)


def test_exact_in_lists_is_the_brute_force_over_the_allowed_rows():
    x = unit_vectors(3000, 32, 50).astype(np.float16).astype(np.float32)
    ix = _ivf(x, 16)
    ix.by_residual = False
    ix.add(x)
    q = unit_vectors(7, 32, 51)
    mask = np.random.default_rng(1).random(3000) < 0.05
    for m in (mask, None):
        s, ids = exact_in_lists(ix, q, 10, m)
        allowed = np.arange(3000) if m is None else np.flatnonzero(m)
        sc = q @ x[allowed].T
        top = np.argsort(-sc, 1)[:, :10]
        assert np.array_equal(ids, allowed[top]) and np.allclose(s, np.take_along_axis(sc, top, 1), atol=1e-5)
    assert exact_in_lists(ix, q, 10, np.zeros(3000, bool))[1].shape == (7, 0)
    assert exact_in_lists(faiss.IndexFlatIP(32), q, 10) is None          # not an fp16 IVF: the caller decodes


def test_joined_search_is_for_a_few_queries_probing_little(monkeypatch):
    from retrieval.query import joined

    x = unit_vectors(3000, 32, 70)
    trained = _ivf(x)
    shards = ivf_shards(trained, x, ((0, 1500), (1500, 3000)), 4)
    group = quantizer_groups(shards, [0, 1500])[0]
    assert joined_pays(group, 1) and joined_pays(group, JOINED_MAX_QUERIES)
    assert not joined_pays(group, JOINED_MAX_QUERIES + 1)            # a batch: each shard's own search
    monkeypatch.setattr(joined, "JOINED_MAX_CODES", 1000)
    assert joined_pays(group, 1)                                      # 4 of 16 lists of 3,000 rows: 750 codes
    for ix in shards:
        ix.nprobe = 8                                                 # 1,500 codes: the shards apart, in parallel
    assert not joined_pays(group, 1)
    pq = faiss.index_factory(32, "IVF16,PQ8", faiss.METRIC_INNER_PRODUCT)   # compact codes: 8 bytes a row
    pq.train(x)
    parts = ivf_shards(pq, x, ((0, 1500), (1500, 3000)))
    compact = quantizer_groups(parts, [0, 1500])[0]
    assert joined_pays(compact, JOINED_MAX_QUERIES + 1) and joined_pays(compact, 10_000)   # a batch: one scan
    for ix in parts:
        ix.nprobe = 8                                                 # 1,500 codes > the cap: apart, batch or not
    assert not joined_pays(compact, 1) and not joined_pays(compact, 10_000)


def test_folded_rule():
    assert folded([200_000, 100, 10_000, 20_000, 5], 0) == [1, 2, 4]
    assert folded([10_000] * 8, 0) == list(range(MAX_ROWS // SMALL_ROWS))   # the cap
    assert folded([10_000, 10], MAX_ROWS - 5) == []


def test_small_shards_folded_in_memory_answer_as_the_group():
    x = unit_vectors(3000, 32, 60)
    trained = _ivf(x)
    trained.by_residual = False
    shards = ivf_shards(trained, x, ((0, 1000), (1000, 1700), (1700, 3000)), 16)   # every list: both sides exact
    group = quantizer_groups(shards, [0, 1000, 1700])[0]
    found = delta_joined(group, None, None, {})
    assert found is not None and found[-1].ntotal == 3000   # all three are small: one in-memory index
    q = unit_vectors(20, 32, 61)
    s, ids, short = search_delta(found, q, 10)
    ws, wi = group.search_all(q, 10)
    assert len(short) == 0 and np.array_equal(ids, wi) and np.allclose(s, ws)
    assert delta_joined(quantizer_groups(shards[:1], [0])[0], None, None, {}) is None   # nothing to save
