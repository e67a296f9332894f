"""The small Flat shards of a modality scanned as one float32 matrix.

A Flat shard (no faiss file: fewer rows than an index pays for, e.g. an append of 100 rows) is
searched by BLAS over its fp16 npy. Shard by shard, each query converted every such shard to float32
again and paid a thread hand-off: ten 100-row appends cut an index's single-query QPS 15x (measured).
Here the small Flat shards of a modality are converted once, into one matrix held in memory (at most
``MAX_ROWS`` rows: 128 MB at d = 512), and every query scans it with one product (``rerank.top_k`` for its top k), the offsets of a
method subtracted and a selection's allowed rows taken, exactly as the shard-by-shard scan does.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..methods.rerank import top_k

SMALL_ROWS = 10_000   # a Flat shard up to this size joins (larger ones keep their own memory-mapped scan)
MAX_ROWS = 65_536     # float32 rows held at most; shards past it keep their own scan


def small_flat(rows: Sequence[int], flat: Sequence[bool]) -> list[int]:
    """Positions of the shards that join (pure): Flat ones of at most SMALL_ROWS rows, in order, while
    the total stays within MAX_ROWS."""
    out, total = [], 0
    for i, (n, is_flat) in enumerate(zip(rows, flat)):
        if is_flat and 0 < n <= SMALL_ROWS and total + n <= MAX_ROWS:
            out.append(i)
            total += n
    return out


class FlatGroup:
    """Small Flat shards (``positions``) as one float32 matrix with each row's global id."""

    def __init__(self, positions: list[int], parts: Sequence[np.ndarray], starts: Sequence[int]):
        self.positions = positions
        self.vectors = np.concatenate([np.asarray(p, np.float32) for p in parts])
        self.bounds = np.cumsum([0] + [len(p) for p in parts])
        self.global_ids = np.concatenate([np.arange(len(p), dtype=np.int64) + int(s) for p, s in zip(parts, starts)])

    def allowed(self, masks: Sequence[Optional[np.ndarray]]) -> Optional[np.ndarray]:
        """Rows of the matrix the shards' ``masks`` allow (None: every row)."""
        if all(m is None for m in masks):
            return None
        return np.concatenate([np.arange(b, e) if m is None else np.flatnonzero(m) + b
                               for m, b, e in zip(masks, self.bounds[:-1], self.bounds[1:])])

    def offsets(self, per_shard: Sequence[np.ndarray]) -> np.ndarray:
        """One method's offsets of the matrix's rows, from the shards' (in ``positions`` order)."""
        return np.concatenate([np.asarray(o, np.float32) for o in per_shard])

    def search(self, q: np.ndarray, k: int, offsets: Optional[np.ndarray] = None,
               allowed: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global ids) [n, min(k, rows)] of s(q, j) - offsets_j over the ``allowed`` rows."""
        x = self.vectors if allowed is None else self.vectors[allowed]
        kk = min(k, len(x))
        if kk == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        s = np.asarray(q, np.float32) @ x.T
        if offsets is not None:
            s -= offsets if allowed is None else offsets[allowed]
        top, rows = top_k(s, kk)
        return top, self.global_ids[rows if allowed is None else allowed[rows]]
