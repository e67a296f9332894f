"""Which rows a search may return: per shard, live (not tombstoned), captioned for text targets, and
matching a ``where`` filter. Every search path applies the same selection.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np


class Selection:
    """Per-shard boolean masks (None: every row of that shard) and their counts. ``spec`` and
    ``generation``: the (target, where, captioned) it was made from and the manifest generation, when
    a snapshot made it (a remote shard group rebuilds the same selection from them)."""

    def __init__(self, masks: list[Optional[np.ndarray]], rows: np.ndarray, spec: Optional[tuple] = None,
                 generation: Optional[int] = None):
        self.masks, self.spec, self.generation = masks, spec, generation
        self.rows = np.asarray(rows, np.int64)
        self.counts = np.array([n if m is None else int(m.sum()) for m, n in zip(masks, self.rows)], np.int64)
        self._memo: dict = {}
        self._flat: Optional[np.ndarray] = None

    @classmethod
    def everything(cls, rows: np.ndarray) -> "Selection":
        return cls([None] * len(rows), rows)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def is_everything(self) -> bool:
        return all(m is None for m in self.masks)

    def fraction(self, i: int) -> float:
        return float(self.counts[i]) / max(int(self.rows[i]), 1)

    def bits(self, i: int) -> np.ndarray:
        """Shard ``i``'s mask packed for faiss's IDSelectorBitmap (little-endian bits)."""
        return self.memo(i, lambda: np.packbits(self.masks[i], bitorder="little"))

    def memo(self, key, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per selection and ``key`` (e.g. a shard's packed bits)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def flat(self) -> np.ndarray:
        """One mask over every row in global order (for the torch path and exact scans)."""
        if self._flat is None:
            self._flat = np.concatenate([np.ones(n, bool) if m is None else m for m, n in zip(self.masks, self.rows)])
        return self._flat

    def __and__(self, other: "Selection") -> "Selection":
        def both(a, b):
            return b if a is None else a if b is None else a & b

        return Selection([both(a, b) for a, b in zip(self.masks, other.masks)], self.rows)


def selector(bits: np.ndarray, n: int):
    """A faiss IDSelectorBitmap over ``bits`` (kept alive on the returned object)."""
    import faiss

    sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
    sel.referenced_bits = bits
    return sel


class RowMasks:
    """The stored row masks of an opened folder (tombstones, caption masks), loaded on first use, and
    the base selection of each search target."""

    def __init__(self, folder, manifest: dict, shards: list[dict]):
        self.folder, self.manifest, self.shards = folder, manifest, shards
        self.rows = np.array([s["rows"] for s in shards], np.int64)
        self._cache: dict[tuple, Selection] = {}

    def live(self) -> Selection:
        """Every row not deleted."""
        from ..store.masks import deleted_mask

        if ("live",) not in self._cache:
            dead = [deleted_mask(self.folder, self.manifest, s) for s in self.shards]
            self._cache[("live",)] = Selection([None if d is None else ~d for d in dead], self.rows)
        return self._cache[("live",)]

    def captioned(self) -> Selection:
        """Every row that has a caption."""
        from ..store.masks import caption_mask

        if ("captioned",) not in self._cache:
            self._cache[("captioned",)] = Selection([caption_mask(self.folder, s) for s in self.shards], self.rows)
        return self._cache[("captioned",)]

    def base(self, target: str, captioned: bool = False) -> Selection:
        """Rows a search of ``target`` may return: live, and captioned for text targets (or when asked)."""
        key = (target, captioned)
        if key not in self._cache:
            sel = self.live()
            if target == "text" or captioned:
                sel = sel & self.captioned()
            self._cache[key] = sel
        return self._cache[key]
