"""The second adversarial pass's bugs on the write side, each as it was reproduced: bad vectors and keys
refused by every path, a folder broken by None keys named by verify and repaired by compact, caption
paths that are folders or FIFOs, typed CSV columns, the import's logit scale, deletes that hold across
syncs, and the smaller one-line errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from retrieval import add_embeddings, build_from_embeddings, import_folder, open_index
from retrieval.cli import main
from retrieval.ops import compact
from tests.clip_retrieval_layout import write_inference_folder
from tests.conftest import FLICKR, TINY, first_captions, make_image, needs_shared, unit_vectors

D = 16
MODEL = {"arch": "synthetic", "embed_dim": D}


def _rows(n, start=0):
    return [{"key": f"k{i}", "image_path": "", "caption": f"c{i}"} for i in range(start, start + n)]


@pytest.fixture()
def folder(tmp_path):
    out = tmp_path / "idx"
    build_from_embeddings(out, unit_vectors(60, D, 0), unit_vectors(60, D, 1), MODEL, _rows(60), shard_size=30)
    return out


def _state(folder):
    return (folder / "manifest.json").read_bytes(), sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("what,msg", [("nan", "NaN or infinite"), ("inf", "NaN or infinite"),
                                      ("scaled", "has norm 3"), ("text-inf", "text embeddings: row 1 has NaN")])
def test_add_embeddings_refuses_the_vectors_build_refuses(folder, what, msg):
    img, txt = unit_vectors(4, D, 5), unit_vectors(4, D, 6)
    if what == "nan":
        img[2, 0] = np.nan
    elif what == "inf":
        img[2, 0] = np.inf
    elif what == "scaled":
        img[2] *= 3
    else:
        txt[1, 3] = np.inf
    before = _state(folder)
    with pytest.raises(ValueError, match=msg):
        add_embeddings(folder, img, txt, _rows(4, 100))
    with pytest.raises(ValueError, match=msg):
        build_from_embeddings(folder.parent / "other", img, txt, MODEL, _rows(4, 100))
    assert _state(folder) == before                     # nothing written, nothing lost
    s, ids = open_index(folder).search(unit_vectors(1, D, 9), 3)
    assert np.isfinite(s).all() and s.max() <= 1.0 + 1e-3


@pytest.mark.parametrize("key,msg", [(None, "non-empty string"), (7, "non-empty string"), ("", "non-empty string"),
                                     ("missing", "has no 'key'"), ("dup", "not unique")])
def test_bad_keys_are_refused_up_front_on_every_path(folder, key, msg):
    rows = _rows(3, 200)
    if key == "missing":
        del rows[1]["key"]
    elif key == "dup":
        rows[2]["key"] = rows[1]["key"]
    else:
        rows[1]["key"] = key
    before = _state(folder)
    with pytest.raises(ValueError, match=msg):
        add_embeddings(folder, unit_vectors(3, D, 3), unit_vectors(3, D, 4), rows)
    with pytest.raises(ValueError, match=msg):
        build_from_embeddings(folder.parent / "other", unit_vectors(3, D, 3), unit_vectors(3, D, 4), MODEL, rows)
    assert _state(folder) == before
    add_embeddings(folder, unit_vectors(2, D, 3), unit_vectors(2, D, 4), _rows(2, 300))   # the folder still works
    compact(folder, threshold=0.0, min_rows=1000)
    assert open_index(folder).delete(["k300"]).found == ["k300"]


def _break_keys(folder):
    """What an old add_embeddings did with key=None: a shard whose key column is null."""
    from retrieval.ops.bias import BiasExtension
    from retrieval.store.generations import publish
    from retrieval.store.manifest import require_manifest
    from retrieval.store.writer import ShardWriter, read_errors, update_counts

    m = require_manifest(folder)
    rows = [{"key": None, "image_path": "", "caption": "x"}, {"key": None, "image_path": "", "caption": "y"}]
    writer = ShardWriter(folder, m, pa.Table.from_pylist(rows[:1]).schema, dict(m["build"]), read_errors(folder), {},
                         extend=BiasExtension(folder))
    writer.add(unit_vectors(2, D, 7), unit_vectors(2, D, 8), [{**r, "_pos": i} for i, r in enumerate(rows)],
               [True, True], [], 2)
    writer.finish()
    update_counts(m, writer.errors)
    publish(folder, m)


def test_a_folder_with_null_keys_is_named_by_verify_and_repaired_by_compact(folder):
    _break_keys(folder)
    r = CliRunner().invoke(main, ["delete", str(folder), "k1"])
    assert r.exit_code == 1 and "not strings; run `retrieval compact`" in r.output
    r = CliRunner().invoke(main, ["verify", str(folder)])
    assert r.exit_code == 1 and "the key column is null, not strings" in r.output
    r = CliRunner().invoke(main, ["compact", str(folder)])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(main, ["verify", str(folder)]).exit_code == 0
    idx = open_index(folder)
    keys = [r["key"] for r in idx.metadata(idx.ids())]
    assert len(keys) == 62 and sum(k.startswith("id-") for k in keys) == 2     # named from their old ids
    assert idx.delete(["k1"]).found == ["k1"]
    add_embeddings(folder, unit_vectors(1, D, 3), unit_vectors(1, D, 4), _rows(1, 500))
    repaired = [json.loads(x) for x in (folder / "errors.jsonl").read_text().splitlines()]
    assert sum(e["action"] == "repaired" and e["stage"] == "key" for e in repaired) == 2


def test_verify_names_a_manifest_whose_row_counts_were_edited(folder):
    m = json.loads((folder / "manifest.json").read_text())
    m["shards"][0]["rows"] -= 1
    m["counts"]["rows"] -= 1
    (folder / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(main, ["verify", str(folder)])
    assert r.exit_code == 1 and "metadata has 30 rows, manifest says 29" in r.output


def test_a_malformed_errors_log_line_does_not_crash_info(folder):
    (folder / "errors.jsonl").write_text('{"pos": 1, "key": "a", "stage": "image", "action": "skipped", "reason": "x"}\n'
                                        "not json at all\n{\"half\": \n[1, 2]\n")
    r = CliRunner().invoke(main, ["info", str(folder)])
    assert r.exit_code == 0 and "skipped: image: x" in r.output, r.output
    assert "columns   key (string), image_path (string), caption (string)" in r.output


@pytest.mark.parametrize("command", [["compact"], ["merge"], ["delete", "KEY"], ["export", "{out}"],
                                     ["bias", "--bank", "corpus"], ["delete", "--restore", "KEY"]])
def test_commands_on_a_missing_folder_say_so_and_create_nothing(tmp_path, command):
    missing = tmp_path / "nope"
    args = [a.replace("{out}", str(tmp_path / "out")) for a in command]
    r = CliRunner().invoke(main, [args[0], str(missing), *args[1:]])
    assert r.exit_code in (1, 2) and "does not exist" in r.output and "Traceback" not in r.output, r.output
    assert not missing.exists()


def test_python_api_arguments_are_checked(folder):
    idx = open_index(folder)
    q = unit_vectors(1, D, 2)
    for kw, msg in (({"k": 2.5}, "k must be a positive integer"), ({"k": True}, "positive integer"),
                    ({"alpha": 11.0, "rerank": "nnn"}, "alpha must be a number in"),
                    ({"alpha": -1.0}, "alpha must be a number in"), ({"candidates": 0}, "candidates"),
                    ({"dedup": 0.0}, "dedup"), ({"tau": float("inf")}, "tau")):
        with pytest.raises(ValueError, match=msg):
            idx.search(q, **{"k": 3, **kw})
    with pytest.raises(ValueError, match="all zeros"):
        idx.search(np.zeros((1, D), np.float32), 3)
    assert not idx.is_live([2**70, -(2**70), 0])[:2].any()


@needs_shared
def test_caption_paths_that_are_folders_or_fifos_are_skipped_not_fatal(tmp_path, tiny_clip):
    names = list(first_captions())[:4]
    root = tmp_path / "photos"
    root.mkdir()
    for n in names:
        shutil.copy(FLICKR / "images" / n, root / n)
        (root / n).with_suffix(".txt").write_text("a caption")
    (root / names[0]).with_suffix(".txt").unlink()
    (root / names[0]).with_suffix(".txt").mkdir()                  # x.txt/ beside x.jpg
    (root / names[1]).with_suffix(".txt").unlink()
    os.mkfifo((root / names[1]).with_suffix(".txt"))               # a FIFO caption: no hang
    os.mkfifo((root / names[2]).with_suffix(".json"))
    r = subprocess.run([sys.executable, "-m", "retrieval.cli", "build", str(root), "--out", str(tmp_path / "idx"),
                        "--model", str(TINY), "--workers", "2", "--quiet"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["counts"]["live"] == 4 and m["counts"]["captionless"] == 2
    log = [json.loads(x) for x in (tmp_path / "idx" / "errors.jsonl").read_text().splitlines()]
    reasons = " | ".join(e["reason"] for e in log)
    assert "is a folder, not a file" in reasons and "is not a regular file" in reasons, reasons


@needs_shared
def test_csv_columns_are_typed_and_the_readme_where_works(tmp_path):
    imgs = [make_image(tmp_path / "imgs" / f"{i}.jpg", color=(30 * i, 90, 200)) for i in range(5)]
    (tmp_path / "m.csv").write_text(
        "image,caption,year,score,ok,day,note\n"
        + "".join(f"{p.name},photo {i},{2018 + i},{i / 2},{'true' if i % 2 else 'false'},2024-01-0{i + 1},"
                  f"{'x' if i == 3 else i}\n" for i, p in enumerate(imgs))
        + f"{imgs[0].name},second caption of photo 0,2018,0.0,false,2024-01-01,0\n")
    out = tmp_path / "idx"
    r = CliRunner().invoke(main, ["build", str(tmp_path / "m.csv"), "--out", str(out), "--image-root",
                                  str(tmp_path / "imgs"), "--model", str(TINY), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["search", str(out), "a photo", "--where", "year >= 2020", "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(x)["year"] for x in r.output.splitlines()) == [2020, 2021, 2022]
    r = CliRunner().invoke(main, ["search", str(out), "a photo", "--where", "ok AND score > 1 AND day < DATE '2024-01-05'",
                                  "--json"])
    assert [json.loads(x)["key"] for x in r.output.splitlines()] == ["3.jpg"]
    r = CliRunner().invoke(main, ["info", str(out)])
    assert "year (int64), score (double), ok (bool), day (date32[day]), note (string)" in r.output, r.output


def test_csv_type_inference_is_pyarrow_like():
    from retrieval.corpus.csvtypes import converter, infer_types

    rows = [{"a": "1", "b": "1.5", "c": "true", "d": "2020-01-02", "e": "2020-01-02 03:04:05", "f": "1", "g": ""},
            {"a": "-7", "b": "2", "c": "FALSE", "d": "", "e": "2021-05-06T07:08:09", "f": "x", "g": ""},
            {"a": "", "b": "1e3", "c": "", "d": "2021-12-31", "e": "", "f": "2", "g": ""}]
    t = infer_types(rows, list("abcdefg"))
    assert [str(t[c]) for c in "abcdefg"] == ["int64", "double", "bool", "date32[day]", "timestamp[us]", "string",
                                              "string"]
    assert [converter(t["a"])(r["a"]) for r in rows] == [1, -7, None]
    assert converter(t["f"])("") == "" and converter(t["c"])("FALSE") is False
    assert str(infer_types([{"z": "2020-01-02T00:00:00Z"}, {"z": "2020-01-03T00:00:00+02:00"}], ["z"])["z"]) == \
        "timestamp[us, tz=UTC]"
    assert str(infer_types([{"z": "2020-01-02T00:00:00Z"}, {"z": "2020-01-03"}], ["z"])["z"]) == "string"
    assert str(infer_types([{"z": str(2**64)}], ["z"])["z"]) == "double"


@needs_shared
def test_import_reads_the_logit_scale_of_a_local_model(tmp_path, tiny_clip):
    x, t = unit_vectors(50, tiny_clip.dim, 0), unit_vectors(50, tiny_clip.dim, 1)
    src = write_inference_folder(tmp_path / "cr", x, t, {"image_path": [""] * 50, "caption": ["c"] * 50}, [50])
    r = CliRunner().invoke(main, ["import", str(src), "--out", str(tmp_path / "a"), "--model", f"local-dir:{TINY}"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())["model"]
    assert abs(m["logit_scale"] - tiny_clip.logit_scale) < 1e-3 and m["logit_scale_source"] == "checkpoint"
    r = CliRunner().invoke(main, ["search", str(tmp_path / "a"), "a dog", "--k", "3"])   # the same model: accepted
    assert r.exit_code == 0, r.output
    declared = import_folder(src, tmp_path / "c", f"local-dir:{TINY}", logit_scale=100.0)["model"]
    assert declared["logit_scale_source"] == "declared"
    with pytest.raises(Exception, match="logit scale"):
        open_index(tmp_path / "c", tiny_clip)                                           # a declared 100 is checked


def test_hub_tags_record_an_assumed_logit_scale_that_is_not_compared():
    from retrieval.embed.models import declared_identity, same_model

    ident = declared_identity("ViT-B-32", "laion2b_s34b_b79k")
    assert ident["logit_scale"] == 100.0 and ident["logit_scale_source"] == "assumed"
    loaded = {"arch": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "embed_dim": 512, "logit_scale": 14.9}
    assert same_model(ident, loaded) and not same_model({**ident, "logit_scale_source": "declared"}, loaded)


def test_pretrained_that_is_not_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("just notes")
    make_image(tmp_path / "a.jpg")
    r = CliRunner().invoke(main, ["build", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "ViT-B-32",
                                  "--pretrained", str(tmp_path / "notes.txt")])
    assert r.exit_code == 2 and "is not a model checkpoint" in r.output and "EOFError" not in r.output, r.output


def test_import_errors_name_the_problem(tmp_path, folder):
    x, t = unit_vectors(20, 512, 0), unit_vectors(20, 512, 1)
    src = write_inference_folder(tmp_path / "cr", x, t, {"image_path": [""] * 20, "caption": ["c"] * 20,
                                                         "key": [f"a{i}" for i in range(5)] + [None] + [f"b{i}" for i in range(14)]},
                                 [20])
    r = CliRunner().invoke(main, ["import", str(src), "--out", str(tmp_path / "o"), "--model", "ViT-B-32"])
    assert r.exit_code == 1 and "row 5 has no key" in r.output, r.output
    bad = write_inference_folder(tmp_path / "cr2", x, t, {"image_path": [""] * 20, "caption": ["c"] * 20}, [20])
    (bad / "metadata" / "metadata_0.parquet").write_text("not parquet")
    r = CliRunner().invoke(main, ["import", str(bad), "--out", str(tmp_path / "o2"), "--model", "ViT-B-32"])
    assert r.exit_code == 1 and "metadata_0.parquet is not a readable Parquet file" in r.output, r.output
    r = CliRunner().invoke(main, ["import", str(folder), "--out", str(tmp_path / "o3"), "--model", "ViT-B-32"])
    assert r.exit_code == 2 and "is an index folder of this engine" in r.output, r.output
    x[7] *= 2  # beyond the sampled rows? every row is checked while importing
    big = write_inference_folder(tmp_path / "cr3", x, t, {"image_path": [""] * 20, "caption": ["c"] * 20}, [20])
    r = CliRunner().invoke(main, ["import", str(big), "--out", str(tmp_path / "o4"), "--model", "ViT-B-32"])
    assert r.exit_code == 1 and "row 7" in r.output and "--normalize" in r.output, r.output


def test_a_url_only_manifest_is_explained_up_front(tmp_path):
    (tmp_path / "m.csv").write_text("url,caption\nhttps://example.com/a.jpg,a dog\n")
    r = CliRunner().invoke(main, ["build", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"), "--model", "ViT-B-32"])
    assert r.exit_code == 1 and "'url' column but no local image-path column" in r.output and "img2dataset" in r.output


def test_bias_nnn_k_beyond_the_references_is_refused(folder):
    r = CliRunner().invoke(main, ["bias", str(folder), "--bank", "corpus", "--nnn-k", "100000"])
    assert r.exit_code == 2 and "nnn_k (100000) must be at most ref_size (4096)" in r.output, r.output


def test_a_hub_tag_whose_weights_are_cached_gives_its_checkpoint_logit_scale(tmp_path, monkeypatch):
    """huggingface_hub's cache layout (models--org--name/snapshots/REV/FILE, refs/main): the tag's file is
    read when it is there, without downloading."""
    import numpy as np
    from safetensors.numpy import save_file

    from retrieval.embed.models import declared_identity

    repo = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file({"logit_scale": np.array(np.log(42.0), np.float32)},
              str(repo / "snapshots" / "abc123" / "open_clip_model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ident = declared_identity("ViT-B-32", "laion2b_s34b_b79k")
    assert ident["logit_scale_source"] == "checkpoint" and abs(ident["logit_scale"] - 42.0) < 1e-3
