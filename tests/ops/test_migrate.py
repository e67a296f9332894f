"""`retrieval migrate`: a format-2 folder (written by the previous release, tests/data/format2) becomes
format 3 without re-embedding: same rows, same deletions, same answers, vectors stored once."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import open_index
from retrieval.cli import main
from retrieval.errors import IndexFolderError

FORMAT2 = Path(__file__).parent.parent / "data" / "format2"


@pytest.fixture
def old(tmp_path):
    dst = tmp_path / "old"
    shutil.copytree(FORMAT2, dst)
    return dst


def _old_state(folder):
    """(image npy, text npy, offsets {method: image offsets}, live global ids) read as format 2 stored them."""
    m = json.loads((folder / "manifest.json").read_text())
    img = np.concatenate([np.load(folder / s["files"]["img_emb"]) for s in m["shards"]]).astype(np.float32)
    txt = np.concatenate([np.load(folder / s["files"]["text_emb"]) for s in m["shards"]]).astype(np.float32)
    where = folder / m["bias"]["dir"]
    off = {meth: np.concatenate([np.load(where / f"{meth}_image_{s['id']:04d}.npy") for s in m["shards"]])
           for meth in ("bsap", "nnn")}
    dead = {f"k{i:04d}" for i in (3, 161)}
    live = np.array([i for i in range(len(img)) if f"k{i:04d}" not in dead])
    return img, txt, off, live


def test_an_old_folder_is_refused_with_the_command_that_fixes_it(old):
    with pytest.raises(IndexFolderError, match=r"older version \(format 2\); run `retrieval migrate"):
        open_index(old)
    r = CliRunner().invoke(main, ["search", str(old), "a caption"])
    assert r.exit_code == 1 and "retrieval migrate" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["verify", str(old)])  # verify reads old folders (check before migrating)
    assert r.exit_code == 0 and r.output.startswith("ok:")


def test_migrate_keeps_rows_deletions_and_answers_and_stores_vectors_once(old):
    img, txt, off, live = _old_state(old)
    before = sum(p.stat().st_size for p in old.rglob("*") if p.is_file())
    r = CliRunner().invoke(main, ["migrate", str(old)])
    assert r.exit_code == 0, r.output
    assert "format 2 -> 3: 3 shard(s), 4 index(es) rewritten (4 kept their IVF centroids)" in r.output
    assert "full-text files: 3 shard(s), 325 rows indexed for keyword search" in r.output
    after = sum(p.stat().st_size for p in old.rglob("*") if p.is_file() and "fts" not in p.relative_to(old).parts)
    assert after < 0.8 * before  # the old indexes, npy copies and augmented indexes are gone at once
    assert not list(old.rglob("aug_*")) and not (old / "img_emb" / "img_emb_0000.npy").exists()
    m = json.loads((old / "manifest.json").read_text())
    assert m["format_version"] == 3 and "augmented" not in m["bias"]
    assert [s["index"]["image"]["key"] for s in m["shards"]] == ["IVF8,SQfp16", "IVF8,SQfp16", "Flat"]
    idx = open_index(old, search_params="nprobe=8")  # full probe: exact
    assert len(idx) == 323 and sorted(idx.ids().tolist()) == live.tolist()
    np.testing.assert_array_equal(idx.embeddings(live, "image"), img[live])  # the fp16 values, bit for bit
    np.testing.assert_array_equal(idx.embeddings(live, "text"), txt[live])
    q = img[[5, 50, 170, 321]] + 0.05
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for rerank, alpha, o in (("clip", 0.0, 0 * off["nnn"]), ("nnn", 0.7, 0.7 * off["nnn"]), ("bsap", 1.0, off["bsap"])):
        s = q @ img[live].T - o[live]
        want = live[np.argsort(-s, axis=1)[:, :10]]
        got = idx.search(q, 10, rerank=rerank, alpha=alpha)[1]
        assert (np.sort(got, 1) == np.sort(want, 1)).mean() >= 0.97, rerank
    r = CliRunner().invoke(main, ["migrate", str(old)])
    assert r.exit_code == 0 and "already format 3" in r.output


def test_appends_after_a_migration_reuse_the_carried_quantizer(old):
    from retrieval import add_embeddings

    CliRunner().invoke(main, ["migrate", str(old)])
    rng = np.random.default_rng(9)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    add_embeddings(old, x, x, [{"key": f"new{i}", "image_path": "", "caption": "c"} for i in range(200)])
    m = json.loads((old / "manifest.json").read_text())
    assert m["shards"][-1]["index"]["image"]["trained_reused"] and m["shards"][-1]["index"]["image"]["key"] == "IVF8,SQfp16"
    idx = open_index(old)
    got = idx.search(x[:3], 1)[1][:, 0]
    assert len(idx) == 523 and [r["key"] for r in idx.metadata(got)] == ["new0", "new1", "new2"]


def test_a_failed_migration_leaves_the_old_folder_and_a_rerun_finishes(old, monkeypatch):
    import retrieval.ops.migrate as mig

    before = (old / "manifest.json").read_bytes()
    calls = []
    real = mig.save_faiss

    def failing(path, index):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("simulated crash")
        real(path, index)

    monkeypatch.setattr(mig, "save_faiss", failing)
    with pytest.raises(OSError):
        mig.migrate(old)
    assert (old / "manifest.json").read_bytes() == before  # nothing published
    monkeypatch.setattr(mig, "save_faiss", real)
    assert mig.migrate(old).indexes == 4
    assert open_index(old).search(np.ones((1, 16), np.float32) / 4, 5)[1].shape == (1, 5)
