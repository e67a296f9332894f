"""IVF indexes on one coarse quantizer searched as one index: one scan, one heap, global ids.

faiss's ``IndexShardsIVF`` assigns a query once but then runs a full search per shard (its own
heap of k, its own per-list set-up: for IVF-PQ the query's distance table of each probed list) and
merges the shards' k-lists. At 10M rows in 100 compressed shards, a 400-candidate pool cost
~8.5 ms that way. Here the shards' inverted lists are stacked list by list (faiss
``HStackInvertedLists``: list l is every shard's list l, one after the other) under one empty
index of the same type, so one ``search_preassigned`` scans them with one heap: 0.5 ms for the same
pool, the same results (docs/benchmarks.md, "Scale").

The stacked lists hold each shard's local ids, so the search reports (list, offset) pairs instead
(faiss's ``store_pairs``), and the global id of each pair is read from that list's ids, gathered
from the shards the first time a query probes the list and kept (8 bytes per row at most).
Index types with a shell here: IVF with fp16/8-bit scalar codes, IVF-PQ, IVF-Flat; others: None.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence, Union

import numpy as np

from .probe import CoarseSearch

Ids = Union[int, np.ndarray]   # a member's global ids: its first id (local id + start) or a table


def empty_like(ivf):
    """An empty index of ``ivf``'s type and codes on its quantizer (trained, no lists of its own), or
    None for a type without a shell here."""
    import faiss

    ix = faiss.downcast_index(ivf)
    if isinstance(ix, faiss.IndexIVFScalarQuantizer):
        shell = faiss.IndexIVFScalarQuantizer(ix.quantizer, ix.d, ix.nlist, ix.sq.qtype, ix.metric_type,
                                              ix.by_residual)
        shell.sq = ix.sq
    elif type(ix) is faiss.IndexIVFPQ:
        shell = faiss.IndexIVFPQ(ix.quantizer, ix.d, ix.nlist, ix.pq.M, ix.pq.nbits, ix.metric_type)
        shell.pq, shell.by_residual = ix.pq, ix.by_residual
        shell.use_precomputed_table, shell.polysemous_ht = ix.use_precomputed_table, ix.polysemous_ht
        shell.do_polysemous_training = False
        if ix.by_residual:
            shell.precompute_table()
    elif type(ix) is faiss.IndexIVFFlat:
        shell = faiss.IndexIVFFlat(ix.quantizer, ix.d, ix.nlist, ix.metric_type)
    else:
        return None
    if shell.code_size != ix.code_size:
        return None
    shell.is_trained = True
    return shell


def compact_codes(ivf) -> bool:
    """Whether IVF ``ivf``'s codes are smaller than fp16 vectors (IVF-PQ, SQ8): the stack copies each
    probed list per query, which pays for them; fp16 rows (~1 KiB) scan faster in place."""
    return ivf.code_size < 2 * ivf.d


class StackedIVF:
    """``ivfs`` (downcast IndexIVF, one quantizer, one type) as one index probing ``nprobe`` lists;
    ``ids[j]``: member j's global ids (its start, or a table of its local ids); ``coarse``: the
    quantizer's ``probe.CoarseSearch``. Make it with ``stack``."""

    def __init__(self, shell, stack, ptrs, ivfs: Sequence, ids: Sequence[Ids], nprobe: int, coarse: CoarseSearch):
        import faiss

        self.shell, self._stack, self._ptrs, self.ivfs, self._ids = shell, stack, ptrs, list(ivfs), list(ids)
        self.rows = sum(x.ntotal for x in self.ivfs)
        self.nprobe, self.coarse = int(nprobe), coarse
        # faiss reads the assignment's width from the params (else from the shell's own nprobe)
        self._params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        self._lists: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def list_ids(self, lst: int) -> np.ndarray:
        """The global ids of stacked list ``lst``, in its order (gathered once)."""
        found = self._lists.get(lst)
        if found is None:
            import faiss

            parts = []
            for ivf, ids in zip(self.ivfs, self._ids):
                n = ivf.invlists.list_size(lst)
                if n:
                    local = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), n)
                    parts.append(local + ids if isinstance(ids, int) else ids[local])
            found = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            with self._lock:
                self._lists[lst] = found
        return found

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global ids) [n, k] of combined queries ``q`` [n, d] over every member (-1 / -inf
        past the rows found)."""
        import faiss

        q = np.ascontiguousarray(q, np.float32)
        dq, iq = self.coarse.search(q, self.nprobe)
        s, pairs = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
        self.shell.search_preassigned_c(len(q), faiss.swig_ptr(q), k, faiss.swig_ptr(iq), faiss.swig_ptr(dq),
                                        faiss.swig_ptr(s), faiss.swig_ptr(pairs), True, self._params)
        out = np.full(pairs.shape, -1, np.int64)
        hit = pairs >= 0
        lists, offs = pairs[hit] >> 32, pairs[hit] & 0xFFFFFFFF
        glob = np.empty(len(lists), np.int64)
        for lst in np.unique(lists).tolist():
            at = lists == lst
            glob[at] = self.list_ids(lst)[offs[at]]
        out[hit] = glob
        return s, out


def stack(ivfs: Sequence, ids: Sequence[Ids], nprobe: int, coarse: Optional[CoarseSearch] = None) -> Optional[StackedIVF]:
    """``StackedIVF`` of ``ivfs`` (equal quantizer, type and code size: a ``query.coarse`` group,
    plus an in-memory delta) probing ``nprobe`` lists, or None when their type has no shell here.
    ``coarse``: the quantizer's ``probe.CoarseSearch`` (default: made here)."""
    import faiss

    shell = empty_like(ivfs[0])
    kind = type(faiss.downcast_index(ivfs[0]))
    if shell is None or any(type(faiss.downcast_index(x)) is not kind for x in ivfs):
        return None
    ptrs = faiss.InvertedListsPtrVector()
    for x in ivfs:
        ptrs.push_back(x.invlists)
    lists = faiss.HStackInvertedLists(ptrs.size(), ptrs.data())
    shell.replace_invlists(lists, False)
    shell.ntotal = sum(x.ntotal for x in ivfs)
    return StackedIVF(shell, lists, ptrs, ivfs, ids, nprobe, coarse or CoarseSearch(ivfs[0].quantizer))
