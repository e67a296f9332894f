"""End-to-end builds with the tiny fixture model (real photos, real captions)."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import build_index, open_index
from retrieval.cli import main
from retrieval.errors import CorpusError, IndexFolderError
from retrieval import index_info

from tests.conftest import FLICKR, TINY, first_captions, make_image, needs_shared, read_layout

pytestmark = needs_shared


def test_flickr_layout_alignment_and_recall(flickr_index):
    img, txt, meta = read_layout(flickr_index)
    assert img.dtype == np.float16 and img.shape == (1000, 256) and txt.shape == (1000, 256)
    np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1.0, atol=2e-3)
    first = first_captions()
    assert meta.column("key").to_pylist() == list(first)  # corpus order, one row per photo
    assert meta.column("caption").to_pylist() == [" ".join(c.split()) for c in first.values()]
    assert all(len(c) == 5 for c in meta.column("captions").to_pylist())
    s = txt.astype(np.float32) @ img.astype(np.float32).T
    top5 = np.argsort(-s, axis=1)[:, :5]
    assert (top5 == np.arange(1000)[:, None]).any(1).mean() > 0.7  # README of the fixture: R@5 = 77.5 %


def test_flickr_manifest_and_stored_vectors(flickr_index):
    m = json.loads((flickr_index / "manifest.json").read_text())
    assert m["complete"] and [s["rows"] for s in m["shards"]] == [300, 300, 300, 100]
    assert [s["offset"] for s in m["shards"]] == [0, 300, 600, 900]
    assert m["counts"]["rows"] == 1000 and m["counts"]["inputs"] == 1000 and m["counts"]["skipped"] == 0
    assert m["model"]["weights_sha256"].startswith("9dce3be6") and m["model"]["embed_dim"] == 256
    img, _, _ = read_layout(flickr_index)
    for s in m["shards"]:  # small shards are Flat: their vectors live in the npy only, scanned with BLAS
        assert set(s["files"]) == {"metadata", "img_emb", "text_emb"}
        assert {mod: (i["key"], i["ntotal"], i["dim"]) for mod, i in s["index"].items()} == {
            "image": ("Flat", s["rows"], 256), "text": ("Flat", s["rows"], 256)}
    idx = open_index(flickr_index)
    q = np.concatenate([img[s["offset"]:s["offset"] + 3] for s in m["shards"]]).astype(np.float32)
    _, ids = idx.search(q, 1)
    assert ids[:, 0].tolist() == [s["offset"] + j for s in m["shards"] for j in range(3)]
    errors = [json.loads(line) for line in (flickr_index / "errors.jsonl").read_text().splitlines()]
    assert errors and all(e["action"] == "repaired" and "truncated" in e["reason"] for e in errors)
    assert m["counts"]["repaired"] == len(errors)


def test_info_cli(flickr_index):
    r = CliRunner().invoke(main, ["info", str(flickr_index)])
    assert r.exit_code == 0, r.output
    assert "1000 of 1000 inputs" in r.output and "Flat" in r.output and "sha256:9dce3be66e9f" in r.output
    data = json.loads(CliRunner().invoke(main, ["info", str(flickr_index), "--json"]).output)
    assert len(data["shards"]) == 4 and data["total_bytes"] > 0


def test_rebuild_of_complete_index_is_a_no_op(flickr_index, tiny_clip):
    before = (flickr_index / "manifest.json").read_text()
    build_index(FLICKR / "captions.csv", flickr_index, image_root=str(FLICKR / "images"), shard_size=300,
                progress=False, clip=tiny_clip)
    assert (flickr_index / "manifest.json").read_text() == before


def test_output_folder_of_another_model_or_setting_is_refused(flickr_index, tiny_clip):
    from retrieval import load_model

    with pytest.raises(IndexFolderError, match="holds an index of"):
        build_index(FLICKR / "captions.csv", flickr_index, image_root=str(FLICKR / "images"), shard_size=300,
                    progress=False, clip=load_model("ViT-B-32", "random", device="cpu"))
    with pytest.raises(IndexFolderError, match="other settings"):
        build_index(FLICKR / "captions.csv", flickr_index, image_root=str(FLICKR / "images"), shard_size=100,
                    progress=False, clip=tiny_clip)


def _bad_corpus(tmp_path):
    root = tmp_path / "bad"
    good = [make_image(root / f"good{i}.jpg", color=(10 * i, 100, 200)) for i in range(3)]
    for i, p in enumerate(good):
        p.with_suffix(".txt").write_text(f"good picture number {i}")
    cases = {
        "zero.jpg": b"",
        "text.jpg": b"this is not an image at all",
        "trunc.jpg": good[0].read_bytes()[:200],
    }
    for name, data in cases.items():
        (root / name).write_bytes(data)
        (root / name).with_suffix(".txt").write_text("a broken file")
    from PIL import Image

    Image.new("1", (10_000, 10_000)).save(root / "bomb.png")
    (root / "bomb.txt").write_text("huge")
    Image.new("CMYK", (50, 50), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    (root / "cmyk.txt").write_text("a cmyk picture")
    Image.fromarray(np.arange(2500, dtype=np.uint16).reshape(50, 50) * 20).save(root / "deep.png")
    (root / "deep.txt").write_bytes(b"sixteen bit \xff picture")
    p = Image.new("P", (50, 50), 0)
    p.putpalette([0, 255, 0] * 256)
    p.save(root / "pal.png", transparency=0)
    (root / "pal.txt").write_text("palette " * 100)  # longer than the context: truncated
    make_image(root / "nocap.jpg")
    return root


def test_bad_inputs_are_skipped_or_repaired_and_logged(tmp_path, tiny_clip):
    out = tmp_path / "idx"
    m = build_index(_bad_corpus(tmp_path), out, shard_size=4, batch_size=3, workers=2, progress=False, clip=tiny_clip,
                    require_captions=True)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    skipped = {e["key"]: e["reason"] for e in errors if e["action"] == "skipped"}
    assert set(skipped) == {"zero", "text", "trunc", "bomb", "nocap"}
    assert "zero-byte" in skipped["zero"] and "not an image" in skipped["text"]
    assert "unreadable" in skipped["trunc"] and "decompression bomb" in skipped["bomb"]
    assert "caption" in skipped["nocap"]
    repaired = {e["key"] for e in errors if e["action"] == "repaired"}
    assert repaired == {"cmyk", "deep", "pal"}
    _, _, meta = read_layout(out)
    assert sorted(meta.column("key").to_pylist()) == ["cmyk", "deep", "good0", "good1", "good2", "pal"]
    assert m["counts"] == {"rows": 6, "live": 6, "deleted": 0, "captionless": 0, "inputs": 11, "skipped": 5,
                           "repaired": 3, "skipped_by_stage": {"image": 4, "caption": 1}}
    m = build_index(tmp_path / "bad", tmp_path / "idx2", shard_size=4, batch_size=3, workers=2, progress=False,
                    clip=tiny_clip)  # by default the photo without a caption is indexed, image-only
    assert m["counts"]["rows"] == 7 and m["counts"]["captionless"] == 1 and m["counts"]["skipped"] == 4


def test_webdataset_build(tmp_path, tiny_clip):
    names = list(first_captions().items())[:6]
    shards = tmp_path / "wds"
    shards.mkdir()
    for t in range(2):
        with tarfile.open(shards / f"{t:05d}.tar", "w") as tf:
            for name, cap in names[t * 3:(t + 1) * 3]:
                stem = name.rsplit(".", 1)[0]
                for ext, data in (("jpg", (FLICKR / "images" / name).read_bytes()), ("txt", cap.encode()),
                                  ("json", json.dumps({"src": name}).encode())):
                    info = tarfile.TarInfo(f"{stem}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    m = build_index(shards, tmp_path / "idx", shard_size=4, workers=0, progress=False, clip=tiny_clip)
    _, _, meta = read_layout(tmp_path / "idx")
    assert m["counts"]["rows"] == 6 and [s["rows"] for s in m["shards"]] == [4, 2]
    assert [json.loads(j)["src"] for j in meta.column("json").to_pylist()] == [n for n, _ in names]


def test_all_bad_corpus_is_an_error(tmp_path, tiny_clip):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jpg").write_bytes(b"nope")
    (tmp_path / "c" / "a.txt").write_text("x")
    with pytest.raises(CorpusError, match="no usable items"):
        build_index(tmp_path / "c", tmp_path / "idx", workers=0, progress=False, clip=tiny_clip)


@pytest.mark.parametrize("args,msg,code", [
    (["/no/such/corpus"], "corpus not found", 2),                          # usage: the command line is wrong
    (["{empty}"], "no images found", 1),                                   # data: the folder holds nothing usable
    (["{flickr}", "--model", "ViT-B-99"], "unknown open_clip model", 2),
])
def test_cli_errors_are_one_line_and_non_zero(tmp_path, args, msg, code):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", flickr=FLICKR / "captions.csv") for a in args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "retrieval.cli", "build", *args, "--out", str(tmp_path / "o"),
                        "--image-root", str(FLICKR / "images")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == code
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and msg in r.stderr


def _cli_build(out, extra=()):
    return [sys.executable, "-m", "retrieval.cli", "build", str(FLICKR / "captions.csv"), "--out", str(out),
            "--image-root", str(FLICKR / "images"), "--model", str(TINY), "--shard-size", "100",
            "--batch-size", "50", "--workers", "2", "--quiet", *extra]


def _processes_naming(path) -> list[int]:
    """Live processes whose command line names ``path``."""
    from pathlib import Path

    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and str(path).encode() in (p / "cmdline").read_bytes():
                if b"State:\tZ" not in (p / "status").read_bytes():  # zombies hold no memory
                    found.append(int(p.name))
        except OSError:
            continue
    return found


def test_kill_9_mid_build_then_resume_gives_identical_index(tmp_path, flickr_index):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli_build(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            n = len(json.loads((out / "manifest.json").read_text())["shards"])
        except (OSError, ValueError):
            n = 0
        if n >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and 3 <= len(m["shards"]) < 10
    deadline = time.time() + 10  # the DataLoader workers die with the build (none left holding memory)
    while _processes_naming(out) and time.time() < deadline:
        time.sleep(0.1)
    assert not _processes_naming(out)
    r = subprocess.run(_cli_build(out), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["stats"]["resumed_from_shard"] >= 3 and len(m["shards"]) == 10
    img, txt, meta = read_layout(out)
    ref_img, ref_txt, ref_meta = read_layout(flickr_index)  # uninterrupted build, other shard size
    assert meta.column("key").to_pylist() == ref_meta.column("key").to_pylist()
    assert len(set(meta.column("key").to_pylist())) == 1000
    np.testing.assert_allclose(img.astype(np.float32), ref_img.astype(np.float32), atol=2e-3)
    assert not [p for p in out.rglob(".*tmp-*")]
    assert index_info(out)["counts"]["rows"] == 1000


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_worker_count_does_not_change_order_and_stream_pickles(tmp_path, tiny_clip):
    import pickle

    from retrieval.embed import EmbedStream, iter_batches
    from retrieval.corpus import open_corpus

    root = tmp_path / "c"
    for i in range(23):
        make_image(root / f"{i:03d}.jpg", color=(i * 10, 0, 0)).with_suffix(".txt").write_text(f"item {i}")
    (root / "007.jpg").write_bytes(b"broken")
    reader = open_corpus(root)

    def run(workers, positions=None):
        return [(b.index, b.first_pos, b.end_pos, [r["key"] for r in b.rows], [e["key"] for e in b.errors])
                for b in iter_batches(reader, tiny_clip.preprocess, tiny_clip.tokenizer, 4, workers, positions)]

    ref = run(0)
    assert run(3) == ref and ref[1][4] == ["007"] and ref[-1][2] == 23
    assert [k for b in run(2, np.arange(9, 23)) for k in b[3]] == [f"{i:03d}" for i in range(9, 23)]
    sparse = run(2, np.array([1, 5, 6, 12, 13, 20]))  # a sync's plan: only some positions, same batching
    assert [b[3] for b in sparse] == [["001", "005", "006", "012"], ["013", "020"]] and sparse == run(0, [1, 5, 6, 12, 13, 20])
    pickle.loads(pickle.dumps(EmbedStream(reader, tiny_clip.preprocess, tiny_clip.tokenizer, 4)))


def test_forced_index_key_builds_ivf_and_small_last_shard_falls_back(tmp_path, tiny_clip):
    root = tmp_path / "c"
    for i in range(70):
        make_image(root / f"{i:03d}.jpg", color=(i * 3, 255 - i * 3, i)).with_suffix(".txt").write_text(f"item {i}")
    m = build_index(root, tmp_path / "idx", index_key="IVF16,Flat", shard_size=60, workers=0, progress=False,
                    clip=tiny_clip)
    # IVF16,Flat is built as IVF16,SQfp16 (the fp16 vectors exactly; the index is their only copy)
    assert [s["index"]["image"]["key"] for s in m["shards"]] == ["IVF16,SQfp16", "Flat"]
    assert [s["index"]["image"]["requested"] for s in m["shards"]] == ["IVF16,Flat", "Flat"]
    assert m["shards"][0]["index"]["image"]["params"].startswith("nprobe=")
    assert set(m["shards"][0]["files"]) == {"metadata", "image_index", "text_index"}
    assert set(m["shards"][1]["files"]) == {"metadata", "img_emb", "text_emb"}
    with pytest.raises(IndexFolderError, match="--index-key"):
        build_index(root, tmp_path / "idx2", index_key="IVF4,Bogus", workers=0, progress=False, clip=tiny_clip)


def test_cli_rejects_bad_sizes_before_any_work(tmp_path):
    r = CliRunner().invoke(main, ["build", str(FLICKR / "captions.csv"), "--out", str(tmp_path / "o"),
                                  "--memory-budget", "lots"])
    assert r.exit_code == 2 and "--memory-budget" in r.output and not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, ["build", str(FLICKR / "captions.csv"), "--out", str(tmp_path / "o"),
                                  "--batch-size", "0"])
    assert r.exit_code == 2 and "must be positive" in r.output
    from retrieval.cli.common import parse_size as _size

    assert _size("4GB") == 4 * 2**30 and _size("512MiB") == 512 * 2**20 and _size("1e6") == 10**6


def test_a_malformed_manifest_row_is_skipped_and_logged_not_fatal(tmp_path, tiny_clip):
    imgs = [make_image(tmp_path / "imgs" / f"{i}.jpg", color=(40 * i, 90, 200)) for i in range(4)]
    (tmp_path / "m.csv").write_text("Image,Caption,year\n"        # header spelled in capitals
                                    f"{imgs[0].name},a blue square,2020\n"
                                    f"{imgs[1].name},one,field,too many\n"
                                    f"{imgs[2].name},\"a caption, with a comma\",2021\n"
                                    f"{imgs[3].name},the last one,2022\n")
    m = build_index(tmp_path / "m.csv", tmp_path / "idx", image_root=str(tmp_path / "imgs"), workers=0,
                    progress=False, clip=tiny_clip, bias_bank=None)
    assert m["counts"]["rows"] == 3 and m["counts"]["skipped"] == 1
    logged = [json.loads(line) for line in (tmp_path / "idx" / "errors.jsonl").read_text().splitlines()]
    assert logged == [{"pos": 1, "key": "row-1", "path": "", "stage": "reader", "action": "skipped",
                       "reason": "malformed CSV row at line 3: 4 fields, the header has 3", "source": ""}]
    _, _, meta = read_layout(tmp_path / "idx")
    assert meta.column("caption").to_pylist() == ["a blue square", "a caption, with a comma", "the last one"]
    assert meta.column("year").to_pylist() == [2020, 2021, 2022]   # typed from every well-formed row


def test_a_manifest_of_urls_says_they_are_not_downloaded(tmp_path):
    from retrieval import open_corpus

    (tmp_path / "urls.csv").write_text("url,caption\n" + "".join(f"https://example.org/{i}.jpg,c{i}\n" for i in range(20)))
    with pytest.raises(CorpusError, match=r"holds remote URLs \(20 rows.*img2dataset"):
        open_corpus(tmp_path / "urls.csv", image_column="URL")  # names match case-insensitively


def test_modalities_image_builds_no_text_index_and_methods_still_work(tmp_path, tiny_clip):
    root = tmp_path / "c"
    for i in range(30):
        make_image(root / f"{i:03d}.jpg", color=(i * 8, 100, 255 - i * 8)).with_suffix(".txt").write_text(f"item {i}")
    m = build_index(root, tmp_path / "idx", shard_size=20, workers=0, progress=False, clip=tiny_clip,
                    modalities=["image"])
    assert all(set(s["index"]) == {"image"} for s in m["shards"]) and m["build"]["modalities"] == ["image"]
    assert not (tmp_path / "idx" / "text_emb").exists() and not list((tmp_path / "idx").rglob("*text*"))
    assert m["bias"]["nnn_ref_rows"] == {"image": 16}  # no stored captions: the prompt bank is the NNN reference
    idx = open_index(tmp_path / "idx", tiny_clip)
    for rerank in ("clip", "bsap", "nnn", "hybrid"):
        assert len(idx.query(text="a red square", k=7, rerank=rerank)[0]) == 7
    assert idx.query(text="a red square", k=7, target="text")[0] == []
    r = CliRunner().invoke(main, ["build", str(root), "--out", str(tmp_path / "idx"), "--model", str(TINY),
                                  "--workers", "0", "--shard-size", "20", "--quiet"])
    assert r.exit_code == 2 and "modalities=['image']" in r.output
    r = CliRunner().invoke(main, ["build", str(root), "--out", str(tmp_path / "o2"), "--modalities", "text"])
    assert r.exit_code == 2 and "--modalities" in r.output and "must include image" in r.output
