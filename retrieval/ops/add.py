"""``add_embeddings``: append precomputed, row-aligned embeddings to a complete index folder.

The appended rows become new shards added to the folder's trained quantizer (no retraining), with
their bias offsets from the stored banks, in the same commits (``store.writer``). A key the folder
already holds is replaced: its old row is tombstoned in the commit that adds the new one. A key the
user deleted (held) is released: adding it is an explicit re-add.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexFolderError
from ..store.generations import next_generation, publish
from ..store.held import held_keys, set_held
from ..store.lock import write_lock
from ..store.manifest import require_manifest
from ..store.masks import find_keys
from ..store.checks import check_unit_rows
from ..store.rows import column_keys, fit_schema, rows_table
from ..store.writer import ShardWriter, read_errors, update_counts
from .bias import BiasExtension


@dataclass
class AddReport:
    added: int
    replaced: int
    shards: int


def add_embeddings(folder: str | os.PathLike, image_emb: np.ndarray, text_emb: np.ndarray,
                   rows=None) -> AddReport:
    """Append rows (``rows``: a pyarrow Table or metadata dicts, each row with a unique ``key``; a
    text row of zeros marks an item without a caption). Returns how many were added and how many
    replaced an existing key."""
    folder = Path(folder)
    img, txt = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"image and text embeddings must be 2-D and row-aligned, got {img.shape} and {txt.shape}")
    if rows is None:
        raise ValueError(f"give one metadata row (with a 'key') per embedding: {len(img)} embeddings")
    table = rows_table(rows, len(img))
    keys = column_keys(table)
    check_unit_rows(img, "image embeddings")
    check_unit_rows(txt, "text embeddings", zero_ok=True)
    with write_lock(folder):
        m = require_manifest(folder)
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is incomplete; finish its build first")
        bias = m.get("bias")
        if bias and not (bias.get("dir") and (folder / bias["dir"] / "ref_nnn_image.npy").exists()):
            raise IndexFolderError(f"{folder}'s biases predate stored reference banks; run `retrieval bias` "
                                   f"once before appending")
        if img.shape[1] != m["model"]["embed_dim"]:
            raise ValueError(f"embeddings have dim {img.shape[1]}, the index has {m['model']['embed_dim']}")
        old = find_keys(folder, m, keys)
        held = held_keys(folder, m)
        if held & set(keys):  # adding a key the user deleted is an explicit re-add: it is released
            set_held(folder, m, held - set(keys), next_generation(m))
        replaced = dict(zip(old.found, old.ids.tolist()))
        table = fit_schema(table, folder_schema(folder, m))
        writer = ShardWriter(folder, m, table.schema, dict(m["build"]), read_errors(folder), dict(replaced),
                             extend=BiasExtension(folder))
        has = np.abs(txt).max(axis=1) > 0
        before = len(m["shards"])
        writer.add(img, txt[has], table, has.tolist(), [], len(img), positions=np.arange(len(img)))
        writer.finish()
        update_counts(m, writer.errors)
        publish(folder, m)
    return AddReport(len(img) - len(replaced), len(replaced), len(m["shards"]) - before)


def folder_schema(folder: Path, manifest: dict):
    """The metadata schema of the folder's newest shard (None when it has none)."""
    import pyarrow.parquet as pq

    shards = [s for s in manifest["shards"] if s["rows"]]
    if not shards:
        return None
    return pq.read_schema(folder / shards[-1]["files"]["metadata"]).remove_metadata()
