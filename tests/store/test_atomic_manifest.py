import json

import pytest

from retrieval.store.atomic import atomic_path, remove_stale_temps, write_json
from retrieval.errors import IndexFolderError
from retrieval.store.layout import shard_files, shard_name
from retrieval.store.manifest import FORMAT_VERSION, load_manifest, new_manifest, save_manifest


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "x.json"
    write_json(p, {"v": 1})
    write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_old_content(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            with open(tmp, "w") as f:
                f.write("half-writ")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["x.txt"]


def test_remove_stale_temps(tmp_path):
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "img_emb" / ".img_emb_0000.npy.tmp-123").write_text("partial")
    (tmp_path / "img_emb" / "img_emb_0000.npy").write_text("kept")
    assert remove_stale_temps(tmp_path) == 1
    assert [f.name for f in (tmp_path / "img_emb").iterdir()] == ["img_emb_0000.npy"]


def test_manifest_round_trip(tmp_path):
    m = new_manifest({"arch": "x", "embed_dim": 4}, {"type": "folder", "path": "/c"}, {"shard_size": 10})
    m["shards"].append({"id": 0, "rows": 3, "files": shard_files(0)})
    save_manifest(tmp_path, m)
    assert load_manifest(tmp_path) == m
    assert load_manifest(tmp_path / "nothing") is None


def test_manifest_rejects_foreign_and_future_files(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(IndexFolderError, match="not a manifest"):
        load_manifest(tmp_path)
    m = new_manifest({}, {}, {})
    m["format_version"] = FORMAT_VERSION + 1
    save_manifest(tmp_path, m)
    with pytest.raises(IndexFolderError, match="format version"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFolderError, match="unreadable"):
        load_manifest(tmp_path)


def test_shard_file_layout_is_clip_retrieval_style():
    assert shard_name(7) == "0007"
    f = shard_files(12)
    assert f["img_emb"] == "img_emb/img_emb_0012.npy"
    assert f["text_emb"] == "text_emb/text_emb_0012.npy"
    assert f["metadata"] == "metadata/metadata_0012.parquet"
    assert f["image_index"] == "faiss/image_0012.index"
