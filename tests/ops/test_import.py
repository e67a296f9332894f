"""`retrieval import`: clip-retrieval's inference output -> an index folder, without re-embedding."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import import_folder, open_index
from retrieval.cli import main
from retrieval.embed.models import same_model
from tests.clip_retrieval_layout import write_inference_folder
from tests.conftest import FLICKR, TINY, needs_shared, unit_vectors

VIT = "ViT-B-32"  # 512-d: the declared model of the synthetic folders (its config only; no weights loaded)


def _synthetic(folder, n=1500, parts=(700, 500, 300), d=512, seed=0, text=True, dtype=np.float16, extra=None):
    x, t = unit_vectors(n, d, seed), unit_vectors(n, d, seed + 1)
    cols = {"image_path": [f"/data/img/{i:05d}.jpg" for i in range(n)], "caption": [f"caption {i}" for i in range(n)],
            "url": [f"https://example.com/{i}.jpg" for i in range(n)], **(extra or {})}
    write_inference_folder(folder, x, t if text else None, cols, parts, dtype)
    return x, t


def _brute(x, q, k=10):
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), top


@needs_shared
def test_import_then_cli_search_equals_brute_force_over_their_npy(tmp_path, flickr_index, tiny_clip):
    """Real embeddings (the fixture CLIP's, of the Flickr photos) in clip-retrieval's layout; `retrieval
    search` by text on the imported folder returns brute force's top-10 over their npy files."""
    src_idx = open_index(flickr_index)
    ids = src_idx.ids("image")
    meta = src_idx.metadata(ids)
    img, txt = src_idx.embeddings(ids, "image"), src_idx.embeddings(ids, "text")
    cols = {"image_path": [str(FLICKR / "images" / r["image_path"]) for r in meta], "caption": [r["caption"] for r in meta]}
    src = write_inference_folder(tmp_path / "cr", img, txt, cols, [400, 400, 200])
    out = tmp_path / "idx"
    r = CliRunner().invoke(main, ["import", str(src), "--out", str(out), "--model", str(TINY),
                                  "--logit-scale", str(tiny_clip.logit_scale), "--shard-size", "300"])
    assert r.exit_code == 0, r.output
    assert "imported 1000 rows (0 without a caption) in 4 shards" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["declared"] and m["corpus"]["type"] == "clip-retrieval" and "bias" in m

    their = np.concatenate([np.load(src / "img_emb" / f"img_emb_{i}.npy") for i in range(3)]).astype(np.float32)
    q = open_index(out, tiny_clip).encode_texts(["a dog runs on the grass"])
    want_s, want_i = _brute(their, q)
    r = CliRunner().invoke(main, ["search", str(out), "a dog runs on the grass", "--k", "10", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.strip().splitlines()]
    assert [row["id"] for row in rows] == want_i[0].tolist()
    np.testing.assert_allclose([row["score"] for row in rows], want_s[0], atol=1e-3)
    assert [row["image_path"] for row in rows] == [cols["image_path"][i] for i in want_i[0]]  # id i = their row i


def test_import_streams_parts_into_shards_and_keeps_their_row_numbers(tmp_path):
    x, t = _synthetic(tmp_path / "cr")
    m = import_folder(tmp_path / "cr", tmp_path / "idx", VIT, "laion2b_s34b_b79k", shard_size=400, index_key="IVF8,Flat")
    assert m["complete"] and m["counts"]["rows"] == 1500 and [s["rows"] for s in m["shards"]] == [400] * 3 + [300]
    assert m["model"] == {**m["model"], "arch": VIT, "pretrained": "laion2b_s34b_b79k", "embed_dim": 512,
                          "logit_scale": 100.0, "declared": True}
    idx = open_index(tmp_path / "idx", search_params="nprobe=8")
    rows = idx.metadata([0, 699, 700, 1499])
    assert [r["key"] for r in rows] == ["0", "699", "700", "1499"]
    assert [r["url"] for r in rows] == [f"https://example.com/{i}.jpg" for i in (0, 699, 700, 1499)]
    np.testing.assert_array_equal(idx.embeddings(np.arange(1500), "image"), x.astype(np.float16).astype(np.float32))
    s, i = idx.search(x[:20], 5, target="text")
    assert (i[:, 0] == _brute(t.astype(np.float16).astype(np.float32), x[:20], 1)[1][:, 0]).all()
    for rerank in ("bsap", "nnn"):  # the corpus bank came from their caption embeddings
        assert idx.search(x[:3], 5, rerank=rerank)[1].shape == (3, 5)


def test_fp32_parts_without_text_and_with_their_own_key_column(tmp_path):
    keys = [f"sample-{i:04d}" for i in range(1500)]
    _synthetic(tmp_path / "cr", text=False, dtype=np.float32, extra={"key": keys})
    m = import_folder(tmp_path / "cr", tmp_path / "idx", VIT, shard_size=1000)
    assert m["corpus"]["dtype"] == "float32" and m["build"]["modalities"] == ["image"]
    assert all("text_index" not in s["files"] for s in m["shards"])
    idx = open_index(tmp_path / "idx")
    assert [r["key"] for r in idx.metadata([0, 1499])] == ["sample-0000", "sample-1499"]
    assert "bias" not in m  # a corpus bank needs captions: skipped (with a warning), plain search works
    assert idx.search(unit_vectors(2, 512, 9), 3)[1].shape == (2, 3)


@pytest.mark.parametrize("breakage,message", [
    ("rows", "metadata_1.parquet has 499 rows, img_emb_1.npy has 500"),
    ("dim", "holds 256-d vectors, but ViT-B-32 makes 512-d"),
    ("norm", "img_emb_2.npy is not L2-normalised"),
    ("nan", "img_emb_0.npy holds NaN"),
    ("text", "text_emb_1.npy is missing"),
    ("textshape", "text_emb_0.npy is float16[700, 256], but img_emb_0.npy is float16[700, 512]"),
    ("int", "must be a 2-D float16/float32 array"),
    ("index-folder", "is a clip-retrieval index folder"),
    ("dupkey", "metadata_2.parquet: key 'k0' (row 200) is not unique"),
])
def test_bad_sources_are_one_line_naming_the_file(tmp_path, breakage, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "cr"
    extra = {"key": [f"k{i % 1400}" for i in range(1500)]} if breakage == "dupkey" else None
    _synthetic(src, d=256 if breakage == "dim" else 512, extra=extra)
    if breakage == "rows":
        t = pq.read_table(src / "metadata" / "metadata_1.parquet")
        pq.write_table(t.slice(0, 499), src / "metadata" / "metadata_1.parquet")
    elif breakage == "norm":
        np.save(src / "img_emb" / "img_emb_2.npy", (unit_vectors(300, 512, 5) * 3).astype(np.float16))
    elif breakage == "nan":
        x = np.load(src / "img_emb" / "img_emb_0.npy")
        x[0, 0] = np.nan
        np.save(src / "img_emb" / "img_emb_0.npy", x)
    elif breakage == "text":
        (src / "text_emb" / "text_emb_1.npy").unlink()
    elif breakage == "textshape":
        np.save(src / "text_emb" / "text_emb_0.npy", unit_vectors(700, 256, 5).astype(np.float16))
    elif breakage == "int":
        np.save(src / "img_emb" / "img_emb_1.npy", np.zeros((500, 512), np.int8))
    elif breakage == "index-folder":
        src = tmp_path / "index"
        src.mkdir()
        (src / "image.index").write_bytes(b"x")
        pq.write_table(pa.table({"a": [1]}), tmp_path / "m.parquet")
    r = CliRunner().invoke(main, ["import", str(src), "--out", str(tmp_path / "idx"), "--model", VIT])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and message in r.output, r.output
    assert not (tmp_path / "idx" / "manifest.json").exists()  # checked before anything is written


def test_normalize_flag_and_usage_errors(tmp_path):
    src = tmp_path / "cr"
    x, _ = _synthetic(src, n=600, parts=(600,))
    np.save(src / "img_emb" / "img_emb_0.npy", (x * 2.5).astype(np.float16))
    r = CliRunner().invoke(main, ["import", str(src), "--out", str(tmp_path / "idx"), "--model", VIT, "--normalize",
                                  "--bias-bank", "none"])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(open_index(tmp_path / "idx").embeddings(np.arange(600)), x, atol=2e-3)
    for args, msg in ([str(src), "--out", str(tmp_path / "idx")], "already holds an index"), \
                     ([str(src), "--out", str(tmp_path / "b"), "--model", "NoSuchNet"], "unknown open_clip model"), \
                     ([str(tmp_path / "nope"), "--out", str(tmp_path / "c")], "is not a folder"):
        r = CliRunner().invoke(main, ["import", *args] + ([] if "--model" in args else ["--model", VIT]))
        assert r.exit_code == 2 and msg in r.output, r.output


def test_a_killed_import_resumes_where_it_stopped(tmp_path, monkeypatch):
    import retrieval.ops.importer as importer

    x, _ = _synthetic(tmp_path / "cr")
    real, calls = importer._rows_chunk, []

    def dying(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after the first shard (400 rows) was committed
        return real(*a, **kw)

    monkeypatch.setattr(importer, "_rows_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        import_folder(tmp_path / "cr", tmp_path / "idx", VIT, shard_size=400, index_key="Flat")
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert not m["complete"] and [s["rows"] for s in m["shards"]] == [400]
    monkeypatch.setattr(importer, "_rows_chunk", real)
    m = import_folder(tmp_path / "cr", tmp_path / "idx", VIT, shard_size=400, index_key="Flat")
    assert m["complete"] and m["counts"]["rows"] == 1500
    idx = open_index(tmp_path / "idx")
    assert [r["key"] for r in idx.metadata(np.arange(1500))] == [str(i) for i in range(1500)]
    np.testing.assert_array_equal(idx.embeddings(np.arange(1500)), x.astype(np.float16).astype(np.float32))


def test_a_declared_model_is_checked_for_width_and_logit_scale_only():
    declared = {"arch": "ViT-B-32", "pretrained": "openai", "embed_dim": 512, "logit_scale": 100.0, "declared": True}
    loaded = {"arch": "local-dir:/m", "pretrained": None, "weights_sha256": "ab" * 32, "embed_dim": 512, "logit_scale": 100.4}
    assert same_model(declared, loaded)
    assert not same_model(declared, {**loaded, "embed_dim": 768})
    assert not same_model(declared, {**loaded, "logit_scale": 15.0})
