"""Stored ComCLIP regions (``retrieval regions``, ``build --regions``): a comclip query reads them and
gives the query-time results; every file is listed, hashed and verified; a sync gives new shards
theirs; compact carries them row for row; a failed run leaves the folder as it was; dense-caption
boxes are stored as given; an index without images refuses in one line."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval import build_index, open_index
from retrieval.cli import main
from retrieval.errors import IndexFolderError
from retrieval.ops import compact
from retrieval.ops.regions import add_regions
from retrieval.store.integrity import verify
from retrieval.store.manifest import load_manifest
from retrieval.store.regions import read_arrays, row_regions
from tests.conftest import FLICKR, unit_vectors

pytest.importorskip("cv2")
pytest.importorskip("textblob")
TEXT = "a dog chasing a man"


@pytest.fixture()
def folder(tmp_path, tiny_clip):
    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted((FLICKR / "images").iterdir())[:14]:
        shutil.copy(p, src / p.name)
    build_index(src, tmp_path / "idx", clip=tiny_clip, progress=False, workers=0, shard_size=5, regions=True)
    return src, tmp_path / "idx"


def _by_key(idx):
    """{key: (boxes, whole)} of every live row's stored regions."""
    out = {}
    for s in idx.manifest["shards"]:
        if not s["rows"]:
            continue
        emb, bx = read_arrays(idx.folder, s["regions"])
        for row, r in enumerate(idx.metadata(np.arange(s["offset"], s["offset"] + s["rows"]))):
            found = row_regions(emb, bx, row)
            out[r["key"]] = (found[0], found[1].tolist())
    return out


def test_stored_regions_answer_as_query_time_ones(folder, tiny_clip, tmp_path):
    src, out = folder
    m = load_manifest(out)
    assert m["build"]["regions"] == {"max_boxes": 16}
    assert all(s["regions"]["missing"] == 0 and len(s["regions"]["files"]) == 2 for s in m["shards"] if s["rows"])
    assert verify(out, m).ok
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    m2 = json.loads((bare / "manifest.json").read_text())
    for s in m2["shards"]:
        s.pop("regions", None)
    m2["build"].pop("regions")
    (bare / "manifest.json").write_text(json.dumps(m2))
    stored = open_index(out, tiny_clip).query(TEXT, k=10, rerank="comclip", candidates=14)[0]
    fresh = open_index(bare, tiny_clip).query(TEXT, k=10, rerank="comclip", candidates=14)[0]
    assert [r["id"] for r in stored] == [r["id"] for r in fresh]
    assert [r["score"] for r in stored] == pytest.approx([r["score"] for r in fresh], abs=2e-3)   # fp16 storage


def test_sync_adds_and_compact_carries_regions(folder, tiny_clip):
    src, out = folder
    before = _by_key(open_index(out, tiny_clip))
    for p in sorted((FLICKR / "images").iterdir())[14:17]:
        shutil.copy(p, src / p.name)
    build_index(src, out, clip=tiny_clip, progress=False, workers=0, shard_size=5)     # a sync: no flag needed
    idx = open_index(out, tiny_clip)
    after = _by_key(idx)
    assert len(after) == 17 and all(after[k] == v for k, v in before.items())
    gone = sorted(after)[:3]
    idx.delete(gone)
    report = compact(out, threshold=0.1)
    assert report.rewritten_shards
    idx = open_index(out, tiny_clip)
    carried = _by_key(idx)
    assert set(carried) == set(after) - set(gone) and all(carried[k] == after[k] for k in carried)
    assert verify(out, load_manifest(out)).ok


def test_a_failed_run_leaves_the_folder_and_a_rerun_completes(folder, tiny_clip, monkeypatch):
    import retrieval.ops.regions as ops_regions

    _, out = folder
    m = load_manifest(out)
    real, calls = ops_regions.write_regions, []

    def dies(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a, **kw)

    monkeypatch.setattr(ops_regions, "write_regions", dies)
    with pytest.raises(RuntimeError):
        add_regions(out, tiny_clip, redo=True)
    assert load_manifest(out) == m and verify(out, m).ok
    monkeypatch.setattr(ops_regions, "write_regions", real)
    assert add_regions(out, tiny_clip, redo=True).shards == 3
    m = load_manifest(out)
    assert verify(out, m).ok
    listed = {rel for s in m["shards"] for rel in (s.get("regions") or {}).get("files", {})}
    assert {p.relative_to(out).as_posix() for p in (out / "regions").iterdir()} <= listed | set(m.get("retired", []))


def test_verify_names_a_bad_region_file(folder):
    _, out = folder
    m = load_manifest(out)
    rel = sorted(m["shards"][0]["regions"]["files"])[0]
    np.save(out / rel, np.zeros((2, 17, 4), np.float16))
    assert rel in {p for p, _ in verify(out, m).problems}


def test_dense_caption_boxes_are_stored_as_given(folder, tiny_clip, tmp_path):
    _, out = folder
    idx = open_index(out, tiny_clip)
    keys = [r["key"] for r in idx.metadata(idx.ids())]
    given = tmp_path / "grit.json"
    given.write_text(json.dumps({k: {"a thing": [[1, 2, 30, 40]], "another": [[0, 0, 10, 10]]} for k in keys}))
    r = CliRunner().invoke(main, ["regions", str(out), "--from", str(given), "--redo"])
    assert r.exit_code == 0, r.output
    stored = _by_key(open_index(out, tiny_clip))
    assert all(v[0] == [(1.0, 2.0, 30.0, 40.0), (0.0, 0.0, 10.0, 10.0)] for v in stored.values())
    given.write_text(json.dumps({keys[0]: {"x": [[5, 5, 1, 1]]}}))
    r = CliRunner().invoke(main, ["regions", str(out), "--from", str(given)])
    assert r.exit_code == 2 and "right > left" in r.output


def test_an_index_without_images_refuses(tmp_path):
    from retrieval import build_from_embeddings

    out = tmp_path / "emb"
    build_from_embeddings(out, unit_vectors(20, 16, 1), unit_vectors(20, 16, 2), {"arch": "synthetic"})
    with pytest.raises(IndexFolderError, match="no image files.*built from embeddings"):
        add_regions(out, None)
