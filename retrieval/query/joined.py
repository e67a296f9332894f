"""The shards of one modality searched together instead of one by one (CPU faiss):

- IVF shards sharing a coarse quantizer (a first build's and every appended shard; ``query.coarse``):
  for a few queries probing few codes (``joined_pays``), without a selection one faiss search over
  the group (global ids), with one, one coarse search and a scan of each shard's lists (local ids);
  for a batch or a wide probe, one coarse search and the shards' lists scanned in parallel threads
  (``CoarseGroup.search_batch``);
- the small Flat shards (appends of a few rows) as one float32 matrix (``query.flat_group``), or,
  without a selection, as one more in-memory IVF index in a group's one search (``query.delta``).

What they return equals the shard-by-shard search at nprobe = nlist (tests/query/test_coarse.py); at
the tuned nprobe the one difference is that the small Flat shards' rows are found through the lists
(``query.delta``) instead of by an exact scan. Shards not covered (a merged index's, other keys)
are left to the shard-by-shard search.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np

from .biases import Biases
from .delta import delta_joined, flat_offsets, search_delta
from .selection import Selection
from .shards import ShardSet
from .stacked import compact_codes
from .topk import merge_topk


JOINED_MAX_QUERIES = 16      # a single query's joined search runs on one thread: one query probing 50k
JOINED_MAX_CODES = 32_768    # codes of 8 shards ran 0.87x the shards' parallel search, and fp16 batches
                             # 1.3-1.9x slower (IndexShardsIVF, 200k x 512, nprobe 16 / 256 of 1,024);
                             # stacked fp16 lists, 0.73x at 3M. Batches over compact codes (IVF-PQ)
                             # go joined: 10M in 100 shards, 2.4-3.4x the shards' parallel search;
                             # but not past the codes cap (nprobe 2,048 of 4,096 at 1M: 0.78-0.94x)


def joined_pays(group, n_queries: int) -> bool:
    """Whether ``group``'s shards are searched together for ``n_queries`` queries (pure in its
    sizes): queries that probe few codes, a few of them or a batch over compact codes (smaller
    than fp16 vectors: IVF-PQ, SQ8); otherwise shard by shard, in parallel."""
    ivf = group.ivfs[0]
    probed = ivf.nprobe / max(1, ivf.nlist) * group.rows
    if probed > JOINED_MAX_CODES:        # a wide probe: the shards' parallel scans win, batch or not
        return False
    # a batch: one scan of the stacked lists, faiss's threads over the queries, pays for compact codes;
    # copying fp16 lists into the stack cost more than it saved
    return n_queries <= JOINED_MAX_QUERIES or compact_codes(ivf)


class JoinedSearch:
    def __init__(self, shards: ShardSet, biases: Biases, modality: str, backend: str, executor=None):
        """``executor``: the thread pool a batch's shards are scanned in (after one coarse search)."""
        self.shards, self.biases, self.modality, self.backend = shards, biases, modality, backend
        self.executor = executor
        self._flat_offsets: Optional[tuple] = None   # ``delta.flat_offsets``, made once
        self._deltas: dict[int, object] = {}
        self._lock = threading.Lock()

    def parts(self, todo: np.ndarray, q: np.ndarray, k: int, offset, selection: Optional[Selection],
              query: Callable, unshift: Callable, need: Optional[int] = None) -> tuple[np.ndarray, list, np.ndarray]:
        """(the positions of ``todo`` left to search shard by shard, the (scores, ids) parts of the others,
        those parts' starts: 0 where ids are global). ``offset``: the engine's Offset (method, scale) or None;
        ``query(q, dim, offset)`` makes a combined index's query, ``unshift(s, offset)`` takes the
        shift off its scores; ``need``: see ``faiss_search.search_shard``."""
        done, parts, starts, wanted = [], [], [], set(todo.tolist())
        if self.backend != "faiss-cpu":
            return todo, parts, np.zeros(0, np.int64)
        flat = self.shards.flat_group(self.modality)
        flat = flat if flat is not None and wanted.issuperset(flat.positions) else None
        every = self.shards.coarse_groups(self.modality)
        groups = [g for g in every if joined_pays(g, len(q))]
        if selection is None:
            for group in groups:   # one search: small shards join a group
                found = self._delta(group, flat) if wanted.issuperset(group.positions) else None
                if found is not None:
                    parts.append(self._search_delta(found, group, flat, q, k, offset, query, unshift))
                    starts.append(0)
                    done += group.positions + (flat.positions if flat is not None else [])
                    break
        for group in every if len(todo) > 1 else ():
            pos = group.positions
            if len(pos) < 2 or not wanted.issuperset(pos) or pos[0] in done:   # merged elsewhere
                continue
            qa = query(q, group.ivfs[0].d, offset)
            done += pos
            pays = group in groups   # else a batch or a wide probe: one coarse search, shards in parallel
            found = None if selection is not None or not pays else group.search_all(qa, k, need)
            if found is not None:
                parts.append((unshift(found[0], offset), found[1]))
                starts.append(0)
                continue
            masks = [None] * len(pos) if selection is None else [selection.masks[i] for i in pos]
            bits = [None if m is None else selection.bits(i) for i, m in zip(pos, masks)]
            allowed = [int(self.shards.rows[i] if m is None else selection.counts[i]) for i, m in zip(pos, masks)]
            found = (group.search(qa, k, masks, bits, allowed, need) if pays else
                     group.search_batch(qa, k, masks, bits, allowed, need, self.executor))
            parts += [(unshift(s, offset), local) for s, local in found]
            starts += self.shards.starts[pos].tolist()
        if flat is not None and flat.positions[0] not in done:
            allowed = None if selection is None else selection.memo(
                ("flat", self.modality), lambda: flat.allowed([selection.masks[i] for i in flat.positions]))
            parts.append(flat.search(q, k, self._flat_offset(flat, offset), allowed))
            starts.append(0)
            done += flat.positions
        gone = set(done)
        rest = np.array([i for i in todo.tolist() if i not in gone], np.int64) if gone else todo
        return rest, parts, np.asarray(starts, np.int64)

    def _delta(self, group, flat):
        """``query.delta.delta_joined`` of ``group`` and the Flat rows (made once; None: not possible)."""
        with self._lock:
            if id(group) not in self._deltas:
                offsets, shifts = self._flat_stored(flat) if flat is not None else (None, {})
                self._deltas[id(group)] = delta_joined(group, flat, offsets, shifts)
            return self._deltas[id(group)]

    def _search_delta(self, found, group, flat, q, k, offset, query, unshift):
        """(scores, global ids) of the one search over ``group`` and the Flat rows; queries short of
        results are answered again by the group's search and the Flat rows' exact scan, merged."""
        s, glob, short = search_delta(found, query(q, group.ivfs[0].d, offset), k)
        s = unshift(s, offset)
        if len(short):
            again = group.search_all(query(q[short], group.ivfs[0].d, offset), k)
            again = [(unshift(again[0], offset), again[1])]
            again += [] if flat is None else [flat.search(q[short], k, self._flat_offset(flat, offset))]
            s[short], glob[short] = merge_topk(again, [0] * len(again), s.shape[1])
        return s, glob

    def _flat_stored(self, flat) -> tuple:
        """({method: the Flat rows' stored offsets} or None, {method: shift}), concatenated once."""
        if self._flat_offsets is None:
            self._flat_offsets = flat_offsets(self.biases, flat, self.modality)
        return self._flat_offsets

    def _flat_offset(self, flat, offset) -> Optional[np.ndarray]:
        """scale x the method's offsets of the Flat group's rows (None without an offset)."""
        if offset is None:
            return None
        return np.float32(offset.scale) * self._flat_stored(flat)[0][offset.method]
