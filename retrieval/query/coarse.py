"""One coarse assignment per query for the shards that share a coarse quantizer.

Every shard of a folder's modality is a copy of the one trained quantizer with its own rows added
(``store.quantizer``): a first build's shards and every appended shard. Searching them one by one
repeats the coarse search (a [q, nlist] product: ~40 µs for one query at nlist 1,024, d 528) and
faiss's per-call set-up for each shard, so an index with a few appended shards served a single query
3.6x slower than the same rows in one shard (measured). Here the quantizer is searched once, for the
largest nprobe any shard of the group needs, and each shard's inverted lists are scanned with its own
nprobe nearest lists of that assignment (``IndexIVF.search_preassigned``): the same lists and scores
as searching each shard alone, since the centroids are equal bit for bit.

The coarse search of a few queries over many lists reads an fp16 copy of the centroids first and
scores its best candidates exactly (``query.probe``: the flat search's lists and scores from about
half the bytes).

Groups are IndexIVF shards (no pre-transform) with a flat coarse quantizer and equal centroids,
found once per opened shard set.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Optional, Sequence

import numpy as np

from ..store.coarse import centroids, flat_ivf
from .faiss_search import complete_short, params_for, preassigned
from .probe import CoarseSearch, fp16_pays
from .selection import selector
from .stacked import compact_codes, stack
from .topk import merge_topk


def _plain_ivf(index):
    """The IndexIVF ``index`` is, when its coarse quantizer is a flat index; else None."""
    import faiss

    return flat_ivf(index) if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else None   # no pre-transform


class CoarseGroup:
    """Shards (``positions`` in their set) whose IVF ``indexes`` share one coarse quantizer."""

    def __init__(self, positions: list[int], indexes: list, starts: Sequence[int]):
        """``starts``: each shard's global id of its first row."""
        self.positions, self.indexes, self.starts = positions, indexes, np.asarray(starts, np.int64)
        self.ivfs = [_plain_ivf(ix) for ix in indexes]
        self.rows = sum(x.ntotal for x in self.ivfs)
        self._joined = self._coarse = None
        self._lock = threading.Lock()

    @property
    def coarse(self) -> CoarseSearch:
        """The group's coarse search (``query.probe``; made on first use)."""
        with self._lock:
            if self._coarse is None:
                self._coarse = CoarseSearch(self.ivfs[0].quantizer)
            return self._coarse

    def reads_half(self, n_queries: int) -> bool:
        """Whether the coarse search of ``n_queries`` queries at the shards' nprobe reads the fp16
        copy of the centroids first (``probe.fp16_pays``, for an inner-product flat quantizer)."""
        ivf = self.ivfs[0]
        return fp16_pays(ivf.nlist, n_queries, ivf.nprobe) and self.coarse.half is not None

    def joined(self):
        """The group as one index (``query.stacked``: one scan of the stacked lists; faiss's
        IndexShardsIVF for a type without a shell there) with ``search(q, k) -> (scores, global
        ids)``, or None when the shards' nprobe differ; made on first use."""
        coarse = self.coarse
        with self._lock:
            if self._joined is None:
                self._joined = one_index(self.ivfs, [int(s) for s in self.starts], coarse=coarse) or False
            return self._joined or None

    def search_all(self, q: np.ndarray, k: int, need: Optional[int] = None) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(scores, global ids) [n, min(k, rows)] of every row of the group (no selection) for queries
        [n, d], as one IVF: one faiss search; queries short of results are searched shard by shard
        with ``search``'s exhaustive retry (those with fewer than ``need`` ids, when given). None when
        the shards' nprobe differ."""
        joined = self.joined()
        if joined is None:
            return None
        kk = min(k, joined.rows)
        q = np.ascontiguousarray(q, np.float32)
        s, glob = joined.search(q, kk)
        want = kk if need is None else min(need, kk)
        short = np.flatnonzero(glob[:, want - 1] < 0) if want else np.zeros(0, np.int64)
        if len(short):
            n = len(self.ivfs)
            s[short], glob[short] = merge_topk(self.search(q[short], kk, [None] * n, [None] * n, [0] * n, need),
                                              self.starts, kk)
        return s, glob

    def search(self, q: np.ndarray, k: int, masks: Sequence[Optional[np.ndarray]],
               bits: Sequence[Optional[np.ndarray]], allowed: Sequence[int],
               need: Optional[int] = None, executor=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(scores, local ids) of each index for queries [n, d], as ``faiss_search.search_shard`` gives
        them: min(k, allowed) per query, a selection's nprobe scaled by 1 / (allowed fraction), short
        queries (fewer than ``need`` ids, when given) searched again exhaustively. ``masks``, ``bits``,
        ``allowed``: per index. ``executor``: scans the indexes' lists in its threads (a batch: one
        coarse search for all the shards, then the shards in parallel)."""
        q = np.ascontiguousarray(q, np.float32)
        plans = []
        for index, ivf, mask, b, a in zip(self.indexes, self.ivfs, masks, bits, allowed):
            n = ivf.ntotal
            a = n if mask is None else int(a)
            kk = min(k, a)
            if kk == 0:
                plans.append(None)
                continue
            sel = None if mask is None else selector(b if b is not None else np.packbits(mask, bitorder="little"),
                                                     len(mask))
            params = params_for(index, kk, sel, scale=n / a)   # search_shard's nprobe rule (None: the index's)
            plans.append((kk, ivf.nprobe if params is None else params.nprobe, sel, params))
        widest = max((p[1] for p in plans if p is not None), default=0)
        if widest:
            dq, iq = self.coarse.search(q, widest)
        def one(j: int):   # need == 0: no query is searched again
            if plans[j] is None:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            kk, nprobe, sel, params = plans[j]
            part = preassigned(self.ivfs[j], q, kk, iq[:, :nprobe], dq[:, :nprobe], params)
            return part if need == 0 else complete_short(self.indexes[j], q, kk, part,
                                                         kk if need is None else min(need, kk), sel)

        todo = range(len(self.indexes))
        return list(executor.map(one, todo)) if executor is not None else [one(j) for j in todo]

    def search_batch(self, q: np.ndarray, k: int, masks: Sequence[Optional[np.ndarray]],
                     bits: Sequence[Optional[np.ndarray]], allowed: Sequence[int], need: Optional[int],
                     executor) -> list[tuple[np.ndarray, np.ndarray]]:
        """``search`` for a batch, its shards scanned in ``executor``'s threads; a query is searched
        again (exhaustively, shard by shard) only when the group as a whole found fewer than
        min(``need`` or k, its allowed rows) ids, not whenever one shard did (a shard's probed lists
        often hold fewer than k of its rows: completing each shard cost a batch more than its search)."""
        parts = self.search(q, k, masks, bits, allowed, 0, executor)
        rows = sum(ivf.ntotal if m is None else int(a) for ivf, m, a in zip(self.ivfs, masks, allowed))
        got = sum((ids >= 0).sum(1) for _, ids in parts)
        short = np.flatnonzero(got < min(k if need is None else need, rows))
        if len(short):
            again = self.search(q[short], k, masks, bits, allowed, need, executor)
            for (s, ids), (s2, i2) in zip(parts, again):
                s[short], ids[short] = s2, i2
        return parts


class ShardsIVF:
    """faiss's IndexShardsIVF over IVF indexes whose type ``query.stacked`` has no shell for: one
    coarse search (``coarse``'s, default made here: ``probe.CoarseSearch.index``), then a search per
    index, merged (``ids[j]``: as ``stacked.stack``'s)."""

    def __init__(self, ivfs: Sequence, ids: Sequence, nprobe: int, coarse: Optional[CoarseSearch] = None):
        import faiss

        coarse = coarse or CoarseSearch(ivfs[0].quantizer)
        self.coarse, self.quantizer = coarse, coarse.index(int(nprobe))   # held: faiss keeps a pointer
        self.index = faiss.IndexShardsIVF(self.quantizer, ivfs[0].nlist, False, True)
        for ix in ivfs:
            self.index.add_shard(ix)
        self.params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        self.rows = sum(x.ntotal for x in ivfs)
        # the global id of each joined id (numbered through the indexes), then -1 for faiss's -1
        self.table = np.concatenate([np.arange(x.ntotal, dtype=np.int64) + i if isinstance(i, int) else np.asarray(i)
                                     for x, i in zip(ivfs, ids)] + [np.array([-1], np.int64)])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s, ids = self.index.search(np.ascontiguousarray(q, np.float32), k, params=self.params)
        return s, self.table[ids]


def one_index(ivfs: Sequence, ids: Sequence, nprobe: Optional[int] = None, coarse: Optional[CoarseSearch] = None):
    """IVF indexes ``ivfs`` (one quantizer) searched as one at ``nprobe`` (default: their common
    nprobe; None when they differ): stacked lists for compact codes (IVF-PQ, SQ8), else faiss's
    IndexShardsIVF (fp16 vectors, and index types without a shell in ``query.stacked``; None
    unless every index's own nprobe is ``nprobe``: faiss's joined search takes theirs). ``coarse``:
    the quantizer's ``probe.CoarseSearch`` (default: made here)."""
    probes = {x.nprobe for x in ivfs}
    if nprobe is None:
        if len(probes) != 1:
            return None
        nprobe = next(iter(probes))
    coarse = coarse or CoarseSearch(ivfs[0].quantizer)
    # fp16 vectors scan faster in place, shard by shard (stacked, 200k in 2-15 shards, nprobe of
    # 1,024: 0.66-0.72x the QPS of IndexShardsIVF's search; one query at 1M in 10 shards, 0.7-0.9x)
    found = stack(ivfs, ids, nprobe, coarse) if compact_codes(ivfs[0]) else None
    if found is not None:
        return found
    return ShardsIVF(ivfs, ids, nprobe, coarse) if probes == {nprobe} else None   # faiss's rule


def single_group(index, start: int = 0) -> Optional[CoarseGroup]:
    """A group of the one IVF index ``index`` (first global id ``start``; no shard position: a merged
    index's), or None when it is not a plain IVF with a flat coarse quantizer."""
    return CoarseGroup([], [index], [start]) if _plain_ivf(index) is not None else None


def group_of_one(groups: Sequence[CoarseGroup], position: int) -> Optional[CoarseGroup]:
    """The group in ``groups`` of the shard at ``position`` when no other shard shares its quantizer."""
    return next((g for g in groups if g.positions == [position]), None)


def quantizer_groups(indexes: Sequence[Optional[object]], starts: Sequence[int]) -> list[CoarseGroup]:
    """The groups of ``indexes`` (None: no faiss index; ``starts``: their global first ids) that share
    a coarse quantizer (one alone is a group of one): plain IVF indexes of one dimension, metric and
    list count whose centroids are equal."""
    import faiss

    groups: dict[tuple, list[int]] = {}
    digests: dict[int, bytes] = {}   # shards sharing one quantizer object (store.coarse) hash it once
    for i, index in enumerate(indexes):
        ivf = None if index is None else _plain_ivf(index)
        if ivf is None:
            continue
        q = faiss.downcast_index(ivf.quantizer)
        address = int(q.this)
        if address not in digests:
            digests[address] = hashlib.blake2b(memoryview(centroids(ivf)).cast("B"), digest_size=16).digest()
        key = (ivf.d, ivf.metric_type, ivf.nlist, type(q).__name__, digests[address])
        groups.setdefault(key, []).append(i)
    return [CoarseGroup(g, [indexes[i] for i in g], [starts[i] for i in g]) for g in groups.values()]
