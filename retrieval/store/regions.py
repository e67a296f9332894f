"""Stored regions (``retrieval regions``): per shard, two row-aligned arrays written under new names
and published by a manifest write (``store.generations``), listed with their hashes like every file:

- ``regions/regions_{k}_gN_emb.npy`` fp16 [rows, 1 + B, d]: each row's whole-image raw embedding,
  then its B box embeddings (zero rows past its boxes);
- ``regions/regions_{k}_gN_boxes.npy`` float32 [rows, B, 4]: its boxes, NaN past them; a row whose
  image could not be read has all NaN and a zero whole-image row (computed at query time instead).
The manifest's shard entry: ``regions: {"max_boxes": B, "missing": n, "files": {rel: record}}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .files import save_npy
from .integrity import file_record
from .layout import REGIONS_DIR, shard_name


def region_files(k: int, generation: int) -> tuple[str, str]:
    base = f"{REGIONS_DIR}/regions_{shard_name(k)}_g{generation:06d}"
    return f"{base}_emb.npy", f"{base}_boxes.npy"


def pack(regions: Sequence, dim: int, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """(emb [n, 1 + B, d] fp16, boxes [n, B, 4] float32) of ``regions`` (each a Regions or None)."""
    emb = np.zeros((len(regions), 1 + max_boxes, dim), np.float16)
    boxes = np.full((len(regions), max_boxes, 4), np.nan, np.float32)
    for i, r in enumerate(regions):
        if r is None:
            continue
        b = min(len(r.boxes), max_boxes)
        emb[i, 0], emb[i, 1:1 + b] = r.whole, r.embs[:b]
        if b:
            boxes[i, :b] = np.asarray(r.boxes[:b], np.float32)
    return emb, boxes


def write_regions(folder: Path, k: int, generation: int, emb: np.ndarray, boxes: np.ndarray) -> dict:
    """Write shard ``k``'s region files; its manifest record."""
    rel_emb, rel_boxes = region_files(k, generation)
    save_npy(folder / rel_emb, emb)
    save_npy(folder / rel_boxes, boxes)
    missing = int((~emb[:, 0].any(1)).sum())
    return {"max_boxes": int(boxes.shape[1]), "missing": missing,
            "files": {rel_emb: file_record(folder / rel_emb), rel_boxes: file_record(folder / rel_boxes)}}


def read_arrays(folder: Path, entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """(emb, boxes) of a shard's regions, memory-mapped."""
    rel_emb, rel_boxes = sorted(entry["files"], key=lambda r: not r.endswith("_emb.npy"))
    return np.load(folder / rel_emb, mmap_mode="r"), np.load(folder / rel_boxes, mmap_mode="r")


def row_regions(emb: np.ndarray, boxes: np.ndarray, row: int) -> Optional[tuple[list, np.ndarray, np.ndarray]]:
    """(boxes, whole [d], box embeddings [b, d]) of one stored row, float32; None when it has none."""
    whole = np.asarray(emb[row, 0], np.float32)
    if not whole.any():
        return None
    b = boxes[row]
    keep = ~np.isnan(b).any(1)
    return [tuple(map(float, x)) for x in b[keep]], whole, np.asarray(emb[row, 1:][keep], np.float32)
