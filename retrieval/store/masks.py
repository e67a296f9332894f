"""Per-shard row bitmaps: tombstones (deleted rows) and caption masks (rows that have a caption).

Both are packed little-endian bitmaps (``np.packbits(mask, bitorder="little")``, the layout faiss's
``IDSelectorBitmap`` reads) saved as .npy. Shards are immutable, so a caption mask is one of a shard's
files. Tombstones change: each change writes a new file named with the manifest generation that
publishes it (``tombstones/0003_g000012.npy``), listed in the manifest's ``tombstones`` section, and
the one it replaces is retired (DESIGN §10).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import IndexFolderError
from .alignment import REPAIR_KEYS
from .integrity import file_record
from .layout import tombstone_file
from .files import save_npy


def pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool), bitorder="little")


def unpack(bits: np.ndarray, rows: int) -> np.ndarray:
    return np.unpackbits(np.asarray(bits, np.uint8), count=rows, bitorder="little").astype(bool)


def load_mask(path: str | os.PathLike, rows: int) -> np.ndarray:
    """A saved bitmap as a bool array of ``rows``; IndexFolderError naming the file if unreadable."""
    try:
        bits = np.load(path)
        if bits.dtype != np.uint8 or bits.ndim != 1 or len(bits) != (rows + 7) // 8:
            raise ValueError(f"holds {bits.dtype} {bits.shape}, not {(rows + 7) // 8} packed bytes")
    except Exception as e:  # noqa: BLE001 - numpy raises several kinds
        raise IndexFolderError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    return unpack(bits, rows)


def deleted_mask(folder: str | os.PathLike, manifest: dict, shard: dict) -> Optional[np.ndarray]:
    """The shard's tombstones (True = deleted), or None when it has none."""
    entry = (manifest.get("tombstones") or {}).get(str(shard["id"]))
    return None if entry is None else load_mask(Path(folder) / entry["file"], shard["rows"])


def caption_mask(folder: str | os.PathLike, shard: dict) -> Optional[np.ndarray]:
    """True for rows with a caption, or None when every row has one."""
    rel = shard["files"].get("captions")
    return None if rel is None else load_mask(Path(folder) / rel, shard["rows"])


def usable_rows(folder: Path, manifest: dict, shard: dict, modality: str) -> np.ndarray:
    """Local rows of ``shard`` a bank or a training sample may use for ``modality``: live, and
    captioned for text."""
    if modality not in shard["index"]:
        return np.zeros(0, np.int64)
    keep = np.ones(shard["rows"], bool)
    dead = deleted_mask(folder, manifest, shard)
    if dead is not None:
        keep &= ~dead
    if modality == "text":
        cap = caption_mask(folder, shard)
        if cap is not None:
            keep &= cap
    return np.flatnonzero(keep)


def live_count(manifest: dict) -> int:
    rows = sum(s["rows"] for s in manifest["shards"])
    return rows - sum(t["count"] for t in (manifest.get("tombstones") or {}).values())


def apply_tombstones(folder: str | os.PathLike, manifest: dict, ids: Iterable[int], generation: int) -> int:
    """Mark global ``ids`` deleted in ``manifest`` (new files under ``generation``; the caller publishes).
    Returns how many were live before."""
    folder = Path(folder)
    ids = np.unique(np.asarray(list(ids), np.int64))
    if len(ids) == 0:
        return 0
    shards = [s for s in manifest["shards"] if s["rows"] > 0]
    starts = np.array([s["offset"] for s in shards], np.int64)
    sh = np.searchsorted(starts, ids, side="right") - 1
    newly = 0
    for k in np.unique(sh):
        s = shards[int(k)]
        local = ids[sh == k] - s["offset"]
        if (local < 0).any() or (local >= s["rows"]).any():
            raise IndexFolderError(f"id {int(local.max() + s['offset'])} is not in shard {s['id']}")
        mask = deleted_mask(folder, manifest, s)
        mask = np.zeros(s["rows"], bool) if mask is None else mask
        newly += int((~mask[local]).sum())
        mask[local] = True
        _set_tombstones(folder, manifest, s, mask, generation)
    return newly


def _set_tombstones(folder: Path, manifest: dict, shard: dict, mask: np.ndarray, generation: int) -> None:
    """Record ``mask`` as ``shard``'s tombstones in ``manifest`` (a new file under ``generation``; no
    file, and no entry, when nothing is deleted)."""
    tomb = manifest.setdefault("tombstones", {})
    if not mask.any():
        tomb.pop(str(shard["id"]), None)
        return
    rel = tombstone_file(shard["id"], generation)
    save_npy(folder / rel, pack(mask))
    tomb[str(shard["id"])] = {"file": rel, "count": int(mask.sum()), **file_record(folder / rel)}


def clear_tombstones(folder: str | os.PathLike, manifest: dict, ids: Iterable[int], generation: int) -> int:
    """Make deleted global ``ids`` live again in ``manifest`` (new files under ``generation``; the
    caller publishes). Returns how many were deleted before."""
    folder = Path(folder)
    ids = np.unique(np.asarray(list(ids), np.int64))
    revived = 0
    for s in manifest["shards"]:
        local = ids[(ids >= s["offset"]) & (ids < s["offset"] + s["rows"])] - s["offset"]
        mask = deleted_mask(folder, manifest, s) if len(local) else None
        if mask is None:
            continue
        revived += int(mask[local].sum())
        mask[local] = False
        _set_tombstones(folder, manifest, s, mask, generation)
    return revived


KEY_CACHE_BYTES = 256 << 20   # key columns kept per process (an append reads every shard's otherwise)
_key_cache: "OrderedDict[tuple, object]" = OrderedDict()
_key_lock = threading.Lock()


def key_column(path: Path):
    """A shard's Parquet ``key`` column (pyarrow), cached per process by path, size and mtime (a
    published shard file never changes), least recently used first out past KEY_CACHE_BYTES."""
    import pyarrow.parquet as pq

    st = path.stat()
    tag = (str(path), st.st_size, st.st_mtime_ns)
    with _key_lock:
        if tag in _key_cache:
            _key_cache.move_to_end(tag)
            return _key_cache[tag]
    col = pq.read_table(path, columns=["key"]).column("key")
    with _key_lock:
        _key_cache[tag] = col
        while len(_key_cache) > 1 and sum(c.nbytes for c in _key_cache.values()) > KEY_CACHE_BYTES:
            _key_cache.popitem(last=False)
    return col


@dataclass
class KeyLookup:
    """Global ids of keys: ``ids`` of the live ones found, and the keys ``missing`` or ``deleted`` already
    (no live row; ``dead`` holds each deleted-row key's newest deleted row, compaction permitting)."""

    ids: np.ndarray
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    dead: dict = field(default_factory=dict)   # key -> global id of its newest deleted row


def find_keys(folder: str | os.PathLike, manifest: dict, keys: Iterable[str]) -> KeyLookup:
    """Where ``keys`` live (one pass over the shards' key columns, in C++ by pyarrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    folder = Path(folder)
    wanted = pa.array(sorted({str(k) for k in keys}), pa.string())
    ids, found, deleted, dead_rows = [], [], [], {}
    for s in manifest["shards"]:
        if s["rows"] == 0:
            continue
        col = key_column(folder / s["files"]["metadata"])
        if not pa.types.is_string(col.type):
            raise IndexFolderError(f"{folder / s['files']['metadata']}: the key column is {col.type}, not strings; "
                                   f"{REPAIR_KEYS}")
        rows = np.flatnonzero(pc.is_in(col, value_set=wanted).to_numpy(zero_copy_only=False))
        if len(rows) == 0:
            continue
        dead = deleted_mask(folder, manifest, s)
        for r in rows:
            key = col[int(r)].as_py()
            if dead is not None and dead[r]:
                deleted.append(key)
                dead_rows[key] = max(dead_rows.get(key, -1), s["offset"] + int(r))
            else:
                found.append(key)
                ids.append(s["offset"] + int(r))
    seen = set(found) | set(deleted)
    gone = sorted(set(deleted) - set(found))
    return KeyLookup(np.array(ids, np.int64), found, [k for k in wanted.to_pylist() if k not in seen], gone,
                     {k: dead_rows[k] for k in gone})
