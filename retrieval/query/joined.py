"""The shards of one modality searched together instead of one by one (CPU faiss):

- IVF shards sharing a coarse quantizer (a first build's and every appended shard; ``query.coarse``):
  without a selection one faiss search over the group (global ids); with one, one coarse search and
  a scan of each shard's lists (local ids);
- the small Flat shards (appends of a few rows) as one float32 matrix (``query.flat_group``).

What they return equals the shard-by-shard search (tests/query/test_coarse.py); shards not covered
(a merged index's, other keys) are left to it.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .biases import Biases
from .selection import Selection
from .shards import ShardSet


class JoinedSearch:
    def __init__(self, shards: ShardSet, biases: Biases, modality: str, backend: str):
        self.shards, self.biases, self.modality, self.backend = shards, biases, modality, backend
        self._flat_offsets: dict[str, np.ndarray] = {}

    def parts(self, todo: np.ndarray, q: np.ndarray, k: int, offset, selection: Optional[Selection],
              query: Callable, unshift: Callable) -> tuple[np.ndarray, list, np.ndarray]:
        """(the positions of ``todo`` left to search shard by shard, the (scores, ids) parts of the others,
        those parts' starts: 0 where ids are global). ``offset``: the engine's Offset (method, scale) or None;
        ``query(q, dim, offset)`` makes a combined index's query, ``unshift(s, offset)`` takes the
        shift off its scores."""
        done, parts, starts, wanted = [], [], [], set(todo.tolist())
        if self.backend != "faiss-cpu":
            return todo, parts, np.zeros(0, np.int64)
        for group in self.shards.coarse_groups(self.modality) if len(todo) > 1 else ():
            pos = group.positions
            if not wanted.issuperset(pos):   # some are covered by a merged index
                continue
            qa = query(q, group.ivfs[0].d, offset)
            done += pos
            found = None if selection is not None else group.search_all(qa, k)
            if found is not None:
                parts.append((unshift(found[0], offset), found[1]))
                starts.append(0)
                continue
            masks = [None] * len(pos) if selection is None else [selection.masks[i] for i in pos]
            bits = [None if m is None else selection.bits(i) for i, m in zip(pos, masks)]
            allowed = [int(self.shards.rows[i] if m is None else selection.counts[i]) for i, m in zip(pos, masks)]
            parts += [(unshift(s, offset), local) for s, local in group.search(qa, k, masks, bits, allowed)]
            starts += self.shards.starts[pos].tolist()
        flat = self.shards.flat_group(self.modality)
        if flat is not None and wanted.issuperset(flat.positions):
            allowed = None if selection is None else selection.memo(
                ("flat", self.modality), lambda: flat.allowed([selection.masks[i] for i in flat.positions]))
            parts.append(flat.search(q, k, self._flat_offset(flat, offset), allowed))
            starts.append(0)
            done += flat.positions
        gone = set(done)
        rest = np.array([i for i in todo.tolist() if i not in gone], np.int64) if gone else todo
        return rest, parts, np.asarray(starts, np.int64)

    def _flat_offset(self, flat, offset) -> Optional[np.ndarray]:
        """scale x the method's offsets of the Flat group's rows (concatenated once per method)."""
        if offset is None:
            return None
        if offset.method not in self._flat_offsets:
            per = self.biases.per_shard(offset.method, self.modality)
            self._flat_offsets[offset.method] = flat.offsets([per[i] for i in flat.positions])
        return np.float32(offset.scale) * self._flat_offsets[offset.method]
