"""One trained quantizer for every shard, and `retrieval merge`: the shards of a first build share a
quantizer trained on a sample drawn across all of them; at nprobe = nlist they answer what one exact
index over every vector answers; merged on disk, they answer what the shard fan-out answers (every
method, a filter, a tombstone, shards appended after the merge), and a merge made stale by a compact
is ignored."""
import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import build_from_embeddings, open_index
from retrieval.cli import main
from retrieval.ops.add import add_embeddings
from retrieval.ops.compact import compact
from retrieval.store.coarse import read_index
from retrieval.store.manifest import load_manifest, save_manifest
from retrieval.store.quantizer import shard_sample

MODEL = {"arch": "synthetic", "pretrained": None, "embed_dim": 32, "logit_scale": 100.0}
N, SHARD, NLIST = 4000, 1000, 16


def _data(seed=0):
    """Shard j's items (rows j*1000 ...) lie around their own direction: a quantizer trained on one
    shard would give the others almost no centroids."""
    rng = np.random.default_rng(seed)
    centres = np.eye(32, dtype=np.float32)[:4] * 4
    x = centres[np.arange(N) // SHARD] + rng.standard_normal((N, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = x + 0.3 * rng.standard_normal((N, 32)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return x, t, centres


def _build(out, key: str = f"IVF{NLIST},Flat", shard_size: int = SHARD):
    """The N items of ``_data`` (keys k0..., a caption and a ``part`` column each) built into ``out``."""
    x, t, _ = _data()
    rows = [{"key": f"k{i}", "image_path": "", "caption": f"c{i}", "part": i % 5} for i in range(N)]
    build_from_embeddings(out, x, t, MODEL, rows, shard_size=shard_size, index_key=key)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("mq") / "idx")


def test_shard_sample_spreads_over_shards():
    picks = shard_sample([100, 0, 300], 40, seed=1)
    assert sum(len(p) for p in picks) == 40 and len(picks[1]) == 0
    assert all((p >= 0).all() and (p < n).all() for p, n in zip(picks, [100, 0, 300]))
    assert 0 < len(picks[0]) < len(picks[2])           # proportional to the usable rows, roughly
    assert sum(len(p) for p in shard_sample([5, 5], 100)) == 10


def test_one_quantizer_trained_across_shards(built):
    import faiss

    m = load_manifest(built)
    assert set(m["trained"]) == {"image", "text"} and m["trained"]["image"]["params"].startswith("nprobe=")
    trained = faiss.read_index(str(built / m["trained"]["image"]["file"]))
    cent = faiss.extract_index_ivf(trained).quantizer.reconstruct_n(0, NLIST)[:, :32]
    for s in m["shards"]:
        assert s["index"]["image"]["trained_reused"] and s["index"]["image"]["params"] == m["trained"]["image"]["params"]
        assert faiss.extract_index_ivf(faiss.read_index(str(built / s["files"]["image_index"]))).quantizer.ntotal == 0
        ix = read_index(built, s["files"]["image_index"], s["index"]["image"])   # the kept centroids attached
        np.testing.assert_array_equal(faiss.extract_index_ivf(ix).quantizer.reconstruct_n(0, NLIST)[:, :32], cent)
    _, _, centres = _data()
    nearest = np.argmax(cent @ centres.T, axis=1)
    assert set(nearest.tolist()) == {0, 1, 2, 3}       # every shard's region got centroids


def test_nprobe_nlist_equals_one_exact_index(built):
    x, t, _ = _data()
    idx = open_index(built, search_params=f"nprobe={NLIST}")
    q = x[::97] + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, got = idx.search(q, 10)
    stored = x.astype(np.float16).astype(np.float32)
    want = np.argsort(-(q @ stored.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got, want)


def _searches(idx, q):
    out = []
    for kw in (dict(), dict(rerank="bsap"), dict(rerank="nnn"), dict(rerank="hybrid", target="text"),
               dict(where="part = 3"), dict(rerank="nnn", where="part < 2")):
        out.append(idx.search(q, 15, **kw))
    return out


def _same(a, b):
    for (s0, i0), (s1, i1) in zip(a, b):
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_allclose(s1, s0, rtol=1e-6, atol=1e-6)


def _copy(built, to):
    """A copy of the built folder at ``to``."""
    shutil.copytree(built, to)
    return to


def _queries(start: int, step: int) -> np.ndarray:
    """Unit queries near every ``step``-th item from ``start``."""
    x, _, _ = _data()
    q = x[start::step] + 0.05
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _unmerged(folder, to):
    """A copy of ``folder`` at ``to`` whose manifest has no merged index: its shards answer."""
    shutil.copytree(folder, to)
    m = load_manifest(to)
    m.pop("merged")
    save_manifest(to, m)
    return to


def test_merge_answers_what_the_shards_answer(built, tmp_path, caplog):
    folder = _copy(built, tmp_path / "idx")
    x, _, _ = _data()
    q = _queries(5, 211)
    before = [_searches(open_index(folder, search_params=p), q) for p in (None, f"nprobe={NLIST}")]

    r = CliRunner().invoke(main, ["merge", str(folder)])
    assert r.exit_code == 0, r.output
    assert "image: 4 shards, 4000 vectors" in r.output and "text: 4 shards" in r.output
    m = load_manifest(folder)
    assert {m["merged"][mod]["ivfdata"] for mod in ("image", "text")} <= {p.relative_to(folder).as_posix()
                                                                            for p in folder.rglob("*.ivfdata")}
    for p, want in zip((None, f"nprobe={NLIST}"), before):
        idx = open_index(folder, search_params=p)
        _same(want, _searches(idx, q))
        assert idx.shard_set.merged("image") is not None                   # the merged index answered

    info = CliRunner().invoke(main, ["info", str(folder)]).output
    assert "merged    image: 4 shards, 4000 vectors, " in info and "merged    text: 4 shards" in info

    # a tombstone after the merge: the merged index skips it
    idx = open_index(folder)
    victim = int(idx.search(q[:1], 1)[1][0, 0])
    idx.delete([f"k{victim}"])
    assert victim not in idx.search(q[:1], 15)[1]
    assert idx.search(q[:1], 15)[1].shape == (1, 15)

    # rows appended after the merge are searched beside it
    add_embeddings(folder, x[:300] * 0 + x[victim], x[:300], [{"key": f"new{i}", "image_path": "", "caption": "n",
                                                              "part": 9} for i in range(300)])
    idx = open_index(folder)
    _, ids = idx.search(q[:1], 400)
    assert (ids >= N).sum() == 300 and idx.shard_set.merged("image") is not None
    assert "4000 vectors, " in CliRunner().invoke(main, ["info", str(folder)]).output
    assert "1 shard(s) added since, searched beside it (`retrieval compact` merges them in)" in \
        CliRunner().invoke(main, ["info", str(folder)]).output

    # a compact rewrites covered shards: the merged index is merged again in the same publish
    idx.delete([f"k{i}" for i in range(300)])
    caplog.set_level(logging.WARNING, logger="retrieval.query")
    report = compact(folder, threshold=0.2)
    assert "merged again: image: " in report.line()
    idx = open_index(folder, search_params=f"nprobe={NLIST}")
    assert idx.shard_set.merged("image") is not None and not any("stale" in r.getMessage() for r in caplog.records)
    plain = _unmerged(folder, tmp_path / "unmerged")
    _same(_searches(open_index(plain, search_params=f"nprobe={NLIST}"), q), _searches(idx, q))

    # a merge made stale by hand (a covered shard's file renamed in the manifest) is ignored, with a warning
    m = load_manifest(folder)
    m["merged"]["image"]["shards"] = {k: "faiss/elsewhere.index" for k in m["merged"]["image"]["shards"]}
    save_manifest(folder, m)
    idx = open_index(folder)
    _, ids = idx.search(q[:1], 15)
    assert idx.shard_set.merged("image") is None
    assert any("stale" in rec.getMessage() for rec in caplog.records)
    assert (ids >= 0).all()
    lines = CliRunner().invoke(main, ["info", str(folder)]).output.splitlines()
    assert [ln for ln in lines if ln.startswith("merged    image: ") and "STALE" in ln]
    assert [ln for ln in lines if ln.startswith("merged    text: ") and "STALE" not in ln]


def test_merge_refuses_what_it_cannot_merge(tmp_path):
    x, t, _ = _data()
    out = tmp_path / "flat"
    build_from_embeddings(out, x[:500], t[:500], MODEL, shard_size=250, index_key="Flat")
    r = CliRunner().invoke(main, ["merge", str(out)])
    assert r.exit_code == 1
    assert "nothing merged" in r.output and "Flat" in r.output and "Traceback" not in r.output
    pq = tmp_path / "pq"   # a compressed key: its shards' quantizers or codebooks differ
    build_from_embeddings(pq, x[:2000], t[:2000], MODEL, shard_size=1000, index_key="IVF16,PQ9x4")
    r = CliRunner().invoke(main, ["merge", str(pq)])
    assert r.exit_code == 1 and "merging needs IVF shards on one quantizer and codec" in r.output
    assert "Traceback" not in r.output and "merged" not in load_manifest(pq)


def test_layout_check_reads_no_lists_and_tells_quantizers_apart(tmp_path):
    """A shard's trained layout, taken from its memory-mapped file, equals the empty clone of the fully
    read index (what the merge compares), differs for another quantizer, and leaves the index whole."""
    import faiss

    from retrieval.ops.merge import _layout

    x, _, _ = _data()
    files = []
    for seed, rows in ((0, x[:500]), (0, x[500:900]), (1, x[:500])):   # the first two: one trained index
        trained = faiss.index_factory(32, f"IVF{NLIST},SQfp16", faiss.METRIC_INNER_PRODUCT)
        trained.cp.seed = seed
        trained.train(x[::2])
        trained.add(rows)
        files.append(str(tmp_path / f"{len(files)}.faiss"))
        faiss.write_index(trained, files[-1])
    full = faiss.read_index(files[0])
    empty = faiss.clone_index(full)
    empty.reset()
    mapped = [faiss.read_index(f, faiss.IO_FLAG_MMAP) for f in files]
    layouts = [_layout(ix) for ix in mapped]
    assert layouts[0] == faiss.serialize_index(empty).tobytes() == layouts[1] != layouts[2]
    assert mapped[0].ntotal == 500 and faiss.extract_index_ivf(mapped[0]).invlists.compute_ntotal() == 500
    faiss.extract_index_ivf(mapped[0]).nprobe = faiss.extract_index_ivf(full).nprobe = NLIST
    want, got = full.search(x[:20], 5), mapped[0].search(x[:20], 5)   # the mapped lists are back in place
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0])


def test_a_refused_merge_says_whether_the_quantizer_or_the_codec_differs():
    import faiss

    from retrieval.ops.merge import _mismatch

    x, _, _ = _data()
    coarse = [faiss.IndexFlatIP(32) for _ in range(2)]
    coarse[0].add(x[:NLIST])
    coarse[1].add(x[NLIST:2 * NLIST])
    ivfs = []
    for q, rows in ((coarse[0], x[:2000]), (coarse[0], x[2000:]), (coarse[1], x[:2000])):
        ivf = faiss.IndexIVFPQ(q, 32, NLIST, 8, 4, faiss.METRIC_INNER_PRODUCT)
        ivf.train(rows)        # the coarse quantizer is trained already: only the PQ codebooks are
        ivfs.append(ivf)
    assert "codec differs" in _mismatch(ivfs[0], ivfs[1], 0, 1, "image")
    assert "same trained quantizer" in _mismatch(ivfs[0], ivfs[2], 0, 2, "image")


def _half_searches(monkeypatch):
    """Make 16 lists count as many (``query.probe``'s thresholds) and count the coarse searches that
    read the fp16 copy of the centroids."""
    from retrieval.query import probe

    monkeypatch.setattr(probe, "FP16_MIN_LISTS", 8)
    monkeypatch.setattr(probe, "EXTRA", 2)
    calls = []
    search = probe.CoarseSearch.search

    def counted(self, q, nprobe):
        calls.append(self.half is not None and probe.fp16_pays(self.flat.ntotal, len(q), nprobe))
        return search(self, q, nprobe)

    monkeypatch.setattr(probe.CoarseSearch, "search", counted)
    return calls


def _wide_searches(idx, q):
    """``_searches`` and filters wide enough to be searched through the index (not scanned exactly)."""
    return _searches(idx, q) + [idx.search(q, 15, where="part < 4"), idx.search(q, 15, rerank="bsap", where="part != 2")]


def test_merged_index_reads_the_fp16_centroids_and_answers_as_the_flat_search(built, tmp_path, monkeypatch):
    folder = _copy(built, tmp_path / "idx")
    q = _queries(7, 401)
    params = "nprobe=4"                  # + EXTRA < 16 lists: the fp16 copy pays
    assert CliRunner().invoke(main, ["merge", str(folder)]).exit_code == 0
    idx = open_index(folder, search_params=params)             # 16 lists: the flat coarse search
    want = [_wide_searches(idx, q[i:i + 1]) for i in range(len(q))]
    assert idx.shard_set.merged("image") is not None
    calls = _half_searches(monkeypatch)
    idx = open_index(folder, search_params=params)
    assert idx.shard_set.merged("image").group is not None
    for i in range(len(q)):
        _same(want[i], _wide_searches(idx, q[i:i + 1]))
    assert sum(calls) >= 6 * len(q)      # every single query's unfiltered and widely filtered searches
    calls.clear()
    idx.search(q, 15)                    # a batch of 10 (up to FP16_MAX_QUERIES) reads it too
    assert calls and all(calls)


def test_one_shard_over_many_lists_reads_the_fp16_centroids(tmp_path, monkeypatch):
    out = _build(tmp_path / "one", shard_size=N)
    q = _queries(3, 397)
    want = [_wide_searches(open_index(out, search_params="nprobe=4"), q[i:i + 1]) for i in range(len(q))]   # flat
    calls = _half_searches(monkeypatch)
    idx = open_index(out, search_params="nprobe=4")
    for i in range(len(q)):
        _same(want[i], _wide_searches(idx, q[i:i + 1]))
    assert sum(calls) >= 6 * len(q)


def test_a_failed_merge_leaves_the_folder_as_it_was(built, tmp_path, monkeypatch):
    from retrieval.ops import merge as ops_merge

    folder = _copy(built, tmp_path / "idx")
    before = load_manifest(folder)
    merge_lists, calls = ops_merge._merge_lists, []

    def second_fails(trained, ivfs, starts, out):   # image merges; text runs out of disk half-way
        calls.append(out)
        if len(calls) == 2:
            with open(out, "wb") as f:
                f.write(b"\0" * 4096)
            raise OSError(28, "No space left on device")
        return merge_lists(trained, ivfs, starts, out)

    monkeypatch.setattr(ops_merge, "_merge_lists", second_fails)
    r = CliRunner().invoke(main, ["merge", str(folder)])
    assert r.exit_code == 1 and "no space left on device" in r.output and "Traceback" not in r.output
    assert len(calls) == 2
    assert load_manifest(folder) == before
    assert not [p.name for p in (folder / "faiss").iterdir() if p.name.startswith("merged_")]
    monkeypatch.setattr(ops_merge, "_merge_lists", merge_lists)
    assert CliRunner().invoke(main, ["merge", str(folder)]).exit_code == 0   # and a rerun merges
    assert open_index(folder).shard_set.merged("text") is not None


def test_bias_and_compact_keep_a_merged_folder_merged(built, tmp_path, monkeypatch):
    from retrieval.ops import merge as ops_merge
    from retrieval.ops.bias import compute_biases

    folder = _copy(built, tmp_path / "idx")
    q = _queries(11, 307)
    assert CliRunner().invoke(main, ["merge", str(folder)]).exit_code == 0
    old = load_manifest(folder)["merged"]["image"]["index"]

    compute_biases(folder, bank="corpus", calibrate=0, seed=3)   # every shard's index rewritten
    m = load_manifest(folder)
    assert m["merged"]["image"]["index"] != old and set(m["merged"]) == {"image", "text"}
    assert m["bias"]["merged_again"].startswith("image: 4 shards, 4000 vectors")
    idx = open_index(folder, search_params=f"nprobe={NLIST}")
    assert idx.shard_set.merged("image") is not None and idx.shard_set.merged("text") is not None
    plain = _unmerged(folder, tmp_path / "plain")
    _same(_searches(open_index(plain, search_params=f"nprobe={NLIST}"), q), _searches(idx, q))

    # a compact whose merge fails publishes nothing: the folder is as it was
    idx.delete([f"k{i}" for i in range(0, N, 2)])
    before = load_manifest(folder)

    def full(trained, ivfs, starts, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ops_merge, "_merge_lists", full)
    with pytest.raises(OSError):
        compact(folder, threshold=0.2)
    assert load_manifest(folder) == before
    monkeypatch.undo()

    # shards that cannot be merged any more (another codec, injected): the compact goes on, unmerged
    trial = _copy(folder, tmp_path / "codec")
    layout, calls = ops_merge._layout, iter(range(256))
    monkeypatch.setattr(ops_merge, "_layout", lambda ix: layout(ix) + bytes([next(calls)]))
    report = compact(trial, threshold=0.2)
    assert report.rewritten_shards and "codec differs" in report.line() and "merged" not in load_manifest(trial)
    monkeypatch.undo()
    _, ids = open_index(trial).search(q[:1], 15)
    assert (ids >= 0).all()

    # compacted down to one shard: nothing left to merge, the stale entry goes
    open_index(folder).delete([f"k{i}" for i in range(1, N, 2)][:-700])
    report = compact(folder, threshold=0.2)
    assert report.shards_after == 1 and "a single shard is already one index" in report.line()
    assert "merged" not in load_manifest(folder)
    _, ids = open_index(folder).search(q[:1], 15)
    assert (ids >= 0).all()


def test_a_merged_folder_does_not_load_the_shards_it_covers(built, tmp_path, monkeypatch):
    from retrieval.query.shards import ShardSet

    folder = _copy(built, tmp_path / "idx")
    assert CliRunner().invoke(main, ["merge", str(folder)]).exit_code == 0
    x, _, _ = _data()
    add_embeddings(folder, x[:50], x[:50], [{"key": f"new{i}", "image_path": "", "caption": "n", "part": 9}
                                            for i in range(50)])
    loaded, index = [], ShardSet.index

    def counted(self, i, modality):
        loaded.append((i, modality))
        return index(self, i, modality)

    monkeypatch.setattr(ShardSet, "index", counted)
    idx = open_index(folder)
    for kw in (dict(), dict(rerank="bsap"), dict(rerank="nnn"), dict(where="part < 4")):
        _, ids = idx.search(x[:3], 10, **kw)
        assert (ids >= 0).all()
    covered = set(idx.shard_set.merged("image").positions.tolist())
    assert covered == {0, 1, 2, 3} and not [p for p in loaded if p[0] in covered]
    idx.search(x[:3], 10, where="part = 3")   # a narrow filter is scanned exactly: the shards' files hold the vectors
    assert {p[0] for p in loaded if p[1] == "image"} >= covered


def test_compact_merges_in_the_shards_appended_since(built, tmp_path):
    """Appended IVF shards are searched beside a merged index; a compact (rewriting the small ones, or
    nothing at all) merges them in, and the merged folder answers as its shards do."""
    from retrieval.ops.merge import merge_behind

    folder = _copy(built, tmp_path / "idx")
    assert CliRunner().invoke(main, ["merge", str(folder)]).exit_code == 0
    x, t, _ = _data(1)
    for j, n in enumerate((50, 60, 700)):
        add_embeddings(folder, x[:n], t[:n], [{"key": f"a{j}_{i}", "image_path": "", "caption": "n", "part": 9}
                                               for i in range(n)])
    assert merge_behind(load_manifest(folder), "image") and merge_behind(load_manifest(folder), "text")
    report = compact(folder)          # the two small appends rewritten as one shard, the 700-row one kept
    m = load_manifest(folder)
    assert report.rewritten_shards == 2 and "image: 6 shards, 4810 vectors" in report.line()
    assert all(set(m["merged"][mod]["shards"]) == {str(s["id"]) for s in m["shards"]} for mod in ("image", "text"))
    assert not merge_behind(m, "image") and not merge_behind(m, "text")
    q = _queries(7, 401)
    idx = open_index(folder, search_params=f"nprobe={NLIST}")
    assert set(idx.shard_set.merged("image").positions.tolist()) == set(range(len(idx.shards)))
    plain = _unmerged(folder, tmp_path / "plain")
    _same(_searches(open_index(plain, search_params=f"nprobe={NLIST}"), q), _searches(idx, q))

    add_embeddings(folder, x[:900], t[:900], [{"key": f"b{i}", "image_path": "", "caption": "n", "part": 9}
                                               for i in range(900)])
    report = compact(folder)          # nothing to rewrite: the one appended shard is merged in all the same
    m = load_manifest(folder)
    assert report.rewritten_shards == 0 and "image: 7 shards, 5710 vectors" in report.merged
    assert not merge_behind(m, "image") and len(m["merged"]["image"]["shards"]) == len(m["shards"])
    assert compact(folder).merged == ""   # up to date: nothing merged again


def test_compressed_shards_share_one_offsets_grid_and_merge(tmp_path):
    """IVF-PQ shards code their offsets on one grid for the folder (the bias section's bounds), so
    their codecs are equal: the folder merges, answers as its shards do (pools re-scored exactly), and
    an appended shard, coded on the same grid, is merged in by a compact."""
    x, t, _ = _data()
    folder = _build(tmp_path / "pq", f"IVF{NLIST},PQ9")
    assert set(load_manifest(folder)["bias"]["offsets_bounds"]) == {"image", "text"}
    plain = _copy(folder, tmp_path / "plain")
    r = CliRunner().invoke(main, ["merge", str(folder)])
    assert r.exit_code == 0, r.output
    q = _queries(3, 197)
    idx = open_index(folder, search_params=f"nprobe={NLIST}")
    assert idx.shard_set.merged("image") is not None
    _same(_searches(open_index(plain, search_params=f"nprobe={NLIST}"), q), _searches(idx, q))
    from retrieval.ops.bias import compute_biases

    compute_biases(folder, bank="corpus", bank_size=300, ref_size=300, calibrate=0, seed=1)   # refit the grid
    assert load_manifest(folder)["bias"]["merged_again"].startswith("image: 4 shards")   # per-shard grids: refused
    add_embeddings(folder, x[:300], t[:300], [{"key": f"a{i}", "image_path": "", "caption": "n", "part": 9}
                                              for i in range(300)])
    report = compact(folder)
    assert "image: 5 shards, 4300 vectors" in report.merged, report.line()
    idx = open_index(folder, search_params=f"nprobe={NLIST}")
    assert idx.shard_set.merged("image") is not None and idx.shard_set.merged("text") is not None
