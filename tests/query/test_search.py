import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.errors import IndexFolderError
from retrieval import open_index

from tests.conftest import FLICKR, bias_folder, first_captions, needs_shared, read_layout

FLICKR_IMAGES = FLICKR / "images"

pytestmark = needs_shared


def test_sharded_search_equals_one_flat_index(flickr_index):
    idx = open_index(flickr_index)
    assert len(idx) == 1000 and len(idx.shards) == 4
    img, txt, _ = read_layout(flickr_index)
    q = txt[:50].astype(np.float32)
    scores, ids = idx.search_vectors(q, k=20)
    brute = q @ img.astype(np.float32).T
    want = np.argsort(-brute, axis=1, kind="stable")[:, :20]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, want, 1), atol=1e-5)
    assert (ids == want).mean() > 0.99  # ties at fp16 resolution may swap
    s_all, i_all = idx.search_vectors(q[:2], k=5000)  # k above the corpus returns the corpus
    assert i_all.shape == (2, 1000) and sorted(i_all[0].tolist()) == list(range(1000))


def test_text_search_finds_the_captioned_photo(flickr_index, tiny_clip):
    idx = open_index(flickr_index, tiny_clip)
    first = first_captions()
    names, caps = list(first)[:40], list(first.values())[:40]
    hits = [n in [r["key"] for r in res] for n, res in zip(names, idx.search_text(caps, k=5))]
    assert np.mean(hits) >= 0.6
    top = idx.search_text([caps[0]], k=3)[0]
    assert set(top[0]) >= {"id", "key", "image_path", "caption", "captions", "score"}
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]


def test_open_refuses_misaligned_metadata(flickr_index, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(flickr_index, bad)
    meta = bad / "metadata" / "metadata_0001.parquet"
    pq.write_table(pq.read_table(meta).slice(0, 299), meta)
    with pytest.raises(IndexFolderError, match="metadata_0001.parquet: (truncated|content differs)"):
        open_index(bad)  # the file records catch it first
    import json

    m = json.loads((bad / "manifest.json").read_text())
    for s in m["shards"]:  # a folder written before file records: the row counts still catch it
        s.pop("bytes"), s.pop("sample")
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFolderError, match="metadata has 299 rows"):
        open_index(bad)
    np.save(bad / "img_emb" / "img_emb_0002.npy", np.zeros((3, 256), np.float16))
    pq.write_table(pa.table({"key": ["x"]}), meta)
    with pytest.raises(IndexFolderError, match="rows, manifest says"):
        open_index(bad)


def test_open_refuses_another_model(flickr_index):
    from retrieval import load_model

    with pytest.raises(IndexFolderError, match="was built with"):
        open_index(flickr_index, load_model("ViT-B-32", "random", device="cpu"))


def test_bad_queries(flickr_index):
    idx = open_index(flickr_index)
    with pytest.raises(ValueError, match="dim"):
        idx.search_vectors(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        idx.search_vectors(np.zeros((1, 256), np.float32), k=0)
    with pytest.raises(IndexFolderError, match="without a model"):
        idx.search_text(["a dog"])


def _all(idx, modality):
    return idx.embeddings(np.arange(len(idx)), modality)


def offsets_tolerance(idx) -> dict:
    """Scores from stored offsets vs a float32 brute force: the fp16 grid of the codes (fp32 math), or
    the bf16-math bound of ``methods.offsets`` where the build computed them so (d = 256: 4e-4)."""
    return {"rtol": 1e-4} if idx.manifest["bias"]["precision"] == "fp32" else {"rtol": 0, "atol": 4e-4}


def test_build_writes_biases_and_exact_bsap_nnn_equal_brute_force(flickr_index, tiny_clip):
    from retrieval.methods.rerank import bsap_scores, top_k

    idx = open_index(flickr_index, tiny_clip)
    sec = idx.manifest["bias"]
    # the bank temperature is half the logit scale (BANK_TAU_SCALE: BSAP safe in both directions, docs/quality.md)
    assert sec["bank"] == "generic" and sec["tau"] == pytest.approx(0.5 * tiny_clip.logit_scale)
    img = _all(idx, "image")
    q = idx.encode_texts(["a dog running on the grass", "two children in a pool", "a man on a bike"])
    bank = np.load(bias_folder(flickr_index) / "bank_bsap_image.npy")
    want_s, want_i = top_k(bsap_scores(q, img, bank, sec["tau"]), 15)
    got_s, got_i = idx.search(q, 15, rerank="bsap")
    assert np.array_equal(np.sort(got_i, 1), np.sort(want_i, 1))
    np.testing.assert_allclose(got_s, want_s, **offsets_tolerance(idx))
    bias = np.concatenate([np.load(p) for p in sorted(bias_folder(flickr_index).glob("nnn_image_*.npy"))])
    want_s, want_i = top_k(q @ img.T - 0.5 * bias, 15)
    got_s, got_i = idx.search(q, 15, rerank="nnn", alpha=0.5)
    assert np.array_equal(np.sort(got_i, 1), np.sort(want_i, 1))
    all_s, all_i = idx.search(q[:1], 5000, rerank="nnn")  # k above the corpus: the whole corpus
    assert sorted(all_i[0].tolist()) == list(range(1000))


def test_candidates_mode_equals_brute_force_within_clip_top_n(flickr_index, tiny_clip):
    from retrieval.methods.rerank import hybrid_scores

    idx = open_index(flickr_index, tiny_clip)
    q = idx.encode_texts(["a black dog jumps over a log"])
    _, cand = idx.search(q, 50)
    bank = np.load(bias_folder(flickr_index) / "bank_bsap_image.npy")
    h = hybrid_scores(q, idx.embeddings(cand[0], "image"), bank, idx.manifest["bias"]["tau"], 0.3)[0]
    got_s, got_i = idx.search(q, 10, rerank="hybrid", candidates=50, lam=0.3)
    assert got_i[0].tolist() == cand[0][np.lexsort((cand[0], -h))][:10].tolist()
    # the stored offsets are quantized to the fp16 grid of the index codes: equal to ~1e-5 (fp32 math)
    np.testing.assert_allclose(got_s[0], np.sort(h)[::-1][:10], **offsets_tolerance(idx))
    # without candidates BSAP-H is exact over the whole corpus: s - (1 - λ) c_j, brute force, with the
    # λ `retrieval bias` chose from the index's own pairs
    from retrieval.methods.rerank import bsap_offsets

    assert idx.biases.lam("image") == idx.manifest["bias"]["lam"]["image"]

    all_ids = np.arange(len(idx))
    x = idx.embeddings(all_ids, "image")
    want = (q @ x.T)[0] - (1 - idx.biases.lam("image")) * bsap_offsets(x, bank, idx.manifest["bias"]["tau"])
    s_exact, i_exact = idx.search(q, 10, rerank="hybrid")
    assert i_exact[0].tolist() == np.argsort(-want, kind="stable")[:10].tolist()
    np.testing.assert_allclose(s_exact[0], np.sort(want)[::-1][:10], atol=2e-3)


def test_query_kinds_targets_and_embeddings(flickr_index, tiny_clip):
    idx = open_index(flickr_index, tiny_clip)
    photo = FLICKR_IMAGES / "1000268201_693b08cb0e.jpg"
    same = idx.query(image=str(photo), k=1)[0][0]
    assert same["key"] == "1000268201_693b08cb0e.jpg" and same["score"] > 0.99  # image -> image finds itself
    to_text = idx.query(image=str(photo), k=5, target="text", return_embeddings=True)[0]
    assert len(to_text) == 5 and to_text[0]["embedding"].shape == (256,)
    emb = idx.embeddings([same["id"]], "image")
    assert idx.query(embedding=emb * 3.0, k=1)[0][0]["id"] == same["id"]  # raw embeddings are normalised
    t2t = idx.query(text=same["caption"], k=1, target="text")[0][0]
    assert t2t["caption"] == same["caption"]


def test_query_errors(flickr_index, tiny_clip, tmp_path):
    idx = open_index(flickr_index, tiny_clip)
    with pytest.raises(ValueError, match="empty"):
        idx.query(text="   ")
    with pytest.raises(ValueError, match="not found"):
        idx.query(image=str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="unknown rerank"):
        idx.query(text="a dog", rerank="bm25")
    with pytest.raises(ValueError, match="exactly one"):
        idx.query(text="a dog", embedding=np.zeros(256))
    bare = tmp_path / "nobias"
    shutil.copytree(flickr_index, bare)
    import json as _json

    m = _json.loads((bare / "manifest.json").read_text())
    del m["bias"]
    (bare / "manifest.json").write_text(_json.dumps(m))
    with pytest.raises(IndexFolderError, match="no bias"):
        open_index(bare, tiny_clip).query(text="a dog", rerank="nnn")


def test_cli_search_and_bias_recompute(flickr_index, tmp_path):
    from click.testing import CliRunner

    from retrieval.cli import main

    folder = tmp_path / "copy"
    shutil.copytree(flickr_index, folder)
    before = np.load(bias_folder(folder) / "bsap_image_0000.npy")
    r = CliRunner().invoke(main, ["bias", str(folder), "--bank", "corpus", "--bank-size", "32"])
    assert r.exit_code == 0, r.output
    assert not np.allclose(before, np.load(bias_folder(folder) / "bsap_image_0000.npy"))
    r = CliRunner().invoke(main, ["search", str(folder), "a dog runs through the grass", "--k", "3", "--rerank", "nnn"])
    assert r.exit_code == 0, r.output
    assert len(r.output.strip().splitlines()) == 4 and "rank" in r.output
    r = CliRunner().invoke(main, ["search", str(folder), "a dog", "--k", "2", "--json"])
    assert [len(__import__("json").loads(line)["key"]) > 0 for line in r.output.splitlines()] == [True, True]
    for args, msg in ((["--k", "0", "x"], "must be positive"), (["--image", "/nope.jpg"], "not a file"), ([""], "empty")):
        r = CliRunner().invoke(main, ["search", str(folder), *args])
        assert r.exit_code == 2 and msg in r.output


def test_torch_backend_matches_faiss_on_the_fixture_index(flickr_index, tiny_clip):
    fa = open_index(flickr_index, tiny_clip, backend="faiss-cpu")
    to = open_index(flickr_index, tiny_clip, backend="torch")
    q = fa.encode_texts(["a dog in the snow", "a woman with an umbrella"])
    for kw in ({}, {"rerank": "bsap"}, {"rerank": "nnn"}):
        s1, i1 = fa.search(q, 20, **kw)
        s2, i2 = to.search(q, 20, **kw)
        np.testing.assert_allclose(s1, s2, atol=1e-4)
        assert (i1 == i2).mean() > 0.95


def test_build_from_embeddings_round_trip(tmp_path):
    from retrieval import build_from_embeddings

    rng = np.random.default_rng(0)
    img = rng.standard_normal((250, 16)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = img + 0.1 * rng.standard_normal(img.shape).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    m = build_from_embeddings(tmp_path / "e", img, txt, {"arch": "synthetic"}, shard_size=100)
    assert [s["rows"] for s in m["shards"]] == [100, 100, 50] and m["bias"]["bank"] == "corpus"
    idx = open_index(tmp_path / "e")
    _, ids = idx.search(txt[:20], 1)
    assert (ids[:, 0] == np.arange(20)).mean() > 0.9
    assert idx.metadata([123])[0]["key"] == "123"
    with pytest.raises(IndexFolderError, match="already holds"):
        build_from_embeddings(tmp_path / "e", img, txt, {"arch": "synthetic"})
    with pytest.raises(ValueError, match="row-aligned"):
        build_from_embeddings(tmp_path / "f", img, txt[:10], {"arch": "synthetic"})
    bad = img.copy()
    bad[7] *= 3.0
    with pytest.raises(ValueError, match="image embeddings: row 7 has norm 3; pass finite, L2-normalised"):
        build_from_embeddings(tmp_path / "g", bad, txt, {"arch": "synthetic"})
    no_caption = txt.copy()
    no_caption[3] = 0.0                     # zeros: an item without a caption, allowed
    no_caption[5, 0] = np.nan
    with pytest.raises(ValueError, match="text embeddings: row 5 has NaN or infinite values"):
        build_from_embeddings(tmp_path / "g", img, no_caption, {"arch": "synthetic"})
    assert not (tmp_path / "g").exists()    # refused before anything is written


def test_metadata_reads_only_the_row_groups_results_need(tmp_path):
    from retrieval import build_from_embeddings
    from retrieval.store.layout import METADATA_ROW_GROUP

    rng = np.random.default_rng(0)
    x = rng.standard_normal((10_000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [{"key": f"k{i}", "image_path": f"{i}.jpg", "caption": f"caption {i}"} for i in range(len(x))]
    build_from_embeddings(tmp_path / "idx", x, x, {"arch": "synthetic"}, rows, shard_size=10_000, bias_bank=None)
    idx = open_index(tmp_path / "idx")
    got = idx.metadata([5000, 4097, 9999, 5001])
    assert [r["key"] for r in got] == ["k5000", "k4097", "k9999", "k5001"] and got[2]["id"] == 9999
    assert set(idx.meta.groups) == {(0, 5000 // METADATA_ROW_GROUP), (0, 9999 // METADATA_ROW_GROUP)}
    with pytest.raises(IndexError, match="not in this index"):
        idx.metadata([10_000])


def test_search_params_override_the_tuned_ones(tmp_path):
    from retrieval import build_from_embeddings

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    build_from_embeddings(tmp_path / "ivf", x, x, {"arch": "synthetic"}, shard_size=1500, index_key="IVF32,Flat",
                          bias_bank=None)
    q = x[:40] + 0.3 * rng.standard_normal((40, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    stored = open_index(tmp_path / "ivf").embeddings(np.arange(3000), "image")
    truth = np.argsort(-(q @ stored.T), axis=1)[:, :10]
    few = open_index(tmp_path / "ivf", search_params="nprobe=1").search(q, 10)[1]
    every = open_index(tmp_path / "ivf", search_params="nprobe=32").search(q, 10)[1]
    assert (np.sort(every, 1) == np.sort(truth, 1)).all()       # nprobe = nlist: exact
    assert (np.sort(few, 1) == np.sort(truth, 1)).mean() < 1.0  # nprobe 1 misses some
    with pytest.raises(ValueError, match="do not apply"):
        open_index(tmp_path / "ivf", search_params="efSearch=64")
