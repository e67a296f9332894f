"""Appends look their keys up in every shard's key column; a process keeps those columns (a
published shard file never changes) keyed by path, size and mtime, least recently used out first."""
import os

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.store import masks


def _write(path, keys, mtime=None):
    pq.write_table(pa.table({"key": keys}), path)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def test_key_columns_are_read_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(masks, "_key_cache", masks.OrderedDict())
    a = tmp_path / "a.parquet"
    _write(a, ["x", "y"], 10**18)
    first = masks.key_column(a)
    assert masks.key_column(a) is first and first.to_pylist() == ["x", "y"]
    _write(a, ["x", "y", "z"], 2 * 10**18)                 # another file under the same name
    assert masks.key_column(a).to_pylist() == ["x", "y", "z"]


def test_the_cache_is_bounded_in_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(masks, "_key_cache", masks.OrderedDict())
    paths = [tmp_path / f"{i}.parquet" for i in range(3)]
    for i, p in enumerate(paths):
        _write(p, [f"k{i}_{j}" for j in range(1000)])
    one = masks.key_column(paths[0]).nbytes
    monkeypatch.setattr(masks, "KEY_CACHE_BYTES", int(2.5 * one))
    for p in paths:
        masks.key_column(p)
    assert [t[0] for t in masks._key_cache] == [str(p) for p in paths[1:]]   # the oldest went first


def test_find_keys_sees_appended_shards(tmp_path):
    import numpy as np

    from retrieval import build_from_embeddings
    from retrieval.ops.add import add_embeddings
    from retrieval.store.manifest import load_manifest
    from tests.conftest import unit_vectors

    folder = tmp_path / "idx"
    build_from_embeddings(folder, unit_vectors(300, 16, 0), unit_vectors(300, 16, 1),
                          {"arch": "synthetic", "embed_dim": 16, "logit_scale": 100.0},
                          [{"key": f"k{i}"} for i in range(300)])
    assert masks.find_keys(folder, load_manifest(folder), ["k5", "new"]).missing == ["new"]
    add_embeddings(folder, unit_vectors(2, 16, 2), unit_vectors(2, 16, 3), [{"key": "new"}, {"key": "k5"}])
    found = masks.find_keys(folder, load_manifest(folder), ["k5", "new"])
    assert sorted(found.found) == ["k5", "new"] and found.ids.min() >= 300 and not found.missing
    assert len(found.ids) == 2 and np.unique(found.ids).size == 2
