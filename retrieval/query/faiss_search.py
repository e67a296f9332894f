"""Search faiss shard indexes with a row selection and full top-k.

- IVF / HNSW (and OPQ/PQ variants): the selection goes inside the search as an ``IDSelectorBitmap``
  (DESIGN §10); nprobe / efSearch are scaled by 1 / (allowed fraction), so a filter keeping 10 % of
  the rows probes 10x the lists and finds about as many candidates as an unfiltered search.
- Flat: faiss's Flat search leaves BLAS when given a selector (22x slower measured), so it searches
  unfiltered for k / fraction x 2 + 16 and drops excluded rows, doubling until full; when under a
  quarter of the rows are allowed, it scans just those rows (one BLAS product).
- A shard that returns fewer than min(k, allowed rows) ids is searched again for those queries
  exhaustively (nprobe = nlist, same selector); what still falls short is the caller's to fill.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from ..store.vectors import fp16_vector_codes
from .selection import Selection, selector
from .topk import merge_topk

THREADED_MAX_QUERIES = 16  # above this, faiss's own OpenMP parallelism over queries wins
FLAT_SCAN_BELOW = 0.25     # allowed fraction under which a Flat shard scans only the allowed rows
MAX_EF = 4096
_MAP_LOCK = threading.Lock()


def flat_vectors(index) -> Optional[np.ndarray]:
    """The float32 vectors of a Flat index as a numpy view (None for other types)."""
    import faiss

    ix = faiss.downcast_index(index)
    if not isinstance(ix, faiss.IndexFlat):
        return None
    return faiss.rev_swig_ptr(ix.get_xb(), ix.ntotal * ix.d).reshape(ix.ntotal, ix.d)


def params_for(index, k: int, sel=None, scale: float = 1.0, exhaustive: bool = False):
    """faiss SearchParameters for ``index``: the selector, nprobe (x ``scale``, or nlist when
    ``exhaustive``) / efSearch; None when plain search needs none."""
    import faiss

    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexPreTransform):
        inner = params_for(ix.index, k, sel, scale, exhaustive)
        return None if inner is None else faiss.SearchParametersPreTransform(index_params=inner)
    if isinstance(ix, faiss.IndexIVF):
        nprobe = ix.nlist if exhaustive else min(ix.nlist, max(1, math.ceil(ix.nprobe * scale)))
        if sel is None and nprobe == ix.nprobe:
            return None
        return faiss.SearchParametersIVF(nprobe=int(nprobe), sel=sel) if sel is not None else \
            faiss.SearchParametersIVF(nprobe=int(nprobe))
    if isinstance(ix, faiss.IndexHNSW):
        if exhaustive:
            return None  # HNSW cannot promise every item
        ef = min(MAX_EF, max(k, math.ceil(ix.hnsw.efSearch * scale)))
        return faiss.SearchParametersHNSW(efSearch=int(ef), sel=sel) if sel is not None else \
            faiss.SearchParametersHNSW(efSearch=int(ef))
    return faiss.SearchParameters(sel=sel) if sel is not None else None


def complete_short(index, q: np.ndarray, k: int, part, want: int, sel) -> tuple[np.ndarray, np.ndarray]:
    """Search again, exhaustively, the queries for which ``index`` returned fewer than ``want`` ids."""
    s, ids = part
    if want <= ids.shape[1] and (ids[:, want - 1] >= 0).all():   # faiss pads with -1 at the end
        return part
    short = np.flatnonzero((ids >= 0).sum(1) < want)
    params = params_for(index, k, sel, exhaustive=True) if len(short) else None
    if params is None:
        return part
    s2, i2 = index.search(q[short], k, params=params)
    s, ids = s.copy(), ids.copy()
    s[short], ids[short] = s2, i2
    return s, ids


def _flat_masked(index, xb: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray, fraction: float):
    """Top-k of a Flat shard among the rows ``mask`` allows (local ids)."""
    allowed = np.flatnonzero(mask)
    if fraction < FLAT_SCAN_BELOW:
        s = q @ xb[allowed].T
        kk = min(k, len(allowed))
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < len(allowed) else np.tile(np.arange(len(allowed)), (len(q), 1))
        ts = np.take_along_axis(s, top, 1)
        order = np.argsort(-ts, axis=1, kind="stable")
        return np.take_along_axis(ts, order, 1), allowed[np.take_along_axis(top, order, 1)]
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    todo = np.arange(len(q))
    fetch = min(index.ntotal, math.ceil(k / fraction * 2) + 16)
    while len(todo):
        s, i = index.search(q[todo], fetch)
        keep = (i >= 0) & mask[np.clip(i, 0, None)]
        full = keep.sum(1) >= k
        for r in np.flatnonzero(full | (fetch >= index.ntotal)):
            sel = np.flatnonzero(keep[r])[:k]
            out_s[todo[r], :len(sel)], out_i[todo[r], :len(sel)] = s[r, sel], i[r, sel]
        todo = todo[~(full | (fetch >= index.ntotal))]
        fetch = min(index.ntotal, fetch * 2)
    return out_s, out_i


def exact_in_lists(index, q: np.ndarray, k: int, mask: Optional[np.ndarray] = None) -> Optional[tuple]:
    """(scores, local ids) [n, min(k, allowed)] of the exact top-k among the rows ``mask`` allows (all
    when None) of an IVF index whose codes are its vectors (SQfp16, not by residual): every list that
    holds an allowed row is scanned, other rows skipped by the selector. Reading codes in place is
    ~40x faster than decoding the rows (faiss decodes one per call). None for other indexes."""
    import faiss

    ivf = faiss.downcast_index(index)
    if not fp16_vector_codes(ivf):
        return None
    if mask is None:
        lists, sel, allowed = np.arange(ivf.nlist, dtype=np.int64), None, ivf.ntotal
    else:
        with _MAP_LOCK:   # built once per index, never by two threads at a time
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map()
        if ivf.direct_map.type != faiss.DirectMap.Array:
            return None
        rows = np.flatnonzero(mask)
        where = faiss.rev_swig_ptr(ivf.direct_map.array.data(), ivf.ntotal)   # list << 32 | offset
        lists, sel, allowed = np.unique(where[rows] >> 32), selector(np.packbits(mask, bitorder="little"), len(mask)), len(rows)
    kk = min(k, allowed)
    if kk == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    assign = np.broadcast_to(lists, (len(q), len(lists)))
    params = faiss.SearchParametersIVF(nprobe=len(lists), sel=sel) if sel is not None else \
        faiss.SearchParametersIVF(nprobe=len(lists))
    return preassigned(ivf, q, kk, assign, np.zeros(assign.shape, np.float32), params)   # no residual: unused


def preassigned(ivf, q: np.ndarray, k: int, assign: np.ndarray, coarse: np.ndarray, params=None):
    """(scores, ids) [n, k] of IVF ``ivf``'s lists ``assign`` [n, nprobe] (with their coarse scores)
    scanned for queries [n, d]; ``params``: faiss SearchParametersIVF whose nprobe is ``assign``'s width
    (None: the index's own). faiss's Python wrapper takes no params, so the C++ call is made here."""
    import faiss

    q, assign = np.ascontiguousarray(q, np.float32), np.ascontiguousarray(assign, np.int64)
    coarse = np.ascontiguousarray(coarse, np.float32)
    s, ids = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    ivf.search_preassigned_c(len(q), faiss.swig_ptr(q), k, faiss.swig_ptr(assign), faiss.swig_ptr(coarse),
                             faiss.swig_ptr(s), faiss.swig_ptr(ids), False, params)
    return s, ids


def search_shard(index, q: np.ndarray, k: int, mask: Optional[np.ndarray] = None, bits: Optional[np.ndarray] = None,
                 allowed: Optional[int] = None, need: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) [n, min(k, allowed)] of one index, full whenever it can be; ``mask`` is indexed
    by the index's ids (a shard's local rows, or global ids for a merged index). ``need``: queries
    are searched again only when they got fewer ids than that (a re-scored pool: best effort)."""
    n = index.ntotal
    allowed = n if mask is None else int(allowed if allowed is not None else mask.sum())
    kk = min(k, allowed)
    if kk == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    want = kk if need is None else min(need, kk)
    if mask is None:
        return complete_short(index, q, kk, index.search(q, kk, params=params_for(index, kk)), want, None)
    xb = flat_vectors(index)
    if xb is not None:
        return _flat_masked(index, xb, q, kk, mask, allowed / n)
    sel = selector(bits if bits is not None else np.packbits(mask, bitorder="little"), len(mask))
    part = index.search(q, kk, params=params_for(index, kk, sel, scale=n / allowed))
    return complete_short(index, q, kk, part, want, sel)


def search_shards(indexes: list, q: np.ndarray, k: int, starts: np.ndarray, pool: Optional[ThreadPoolExecutor] = None,
                  selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard index and merge: sequential for query batches, a thread per shard for a few queries."""

    def one(i):
        if selection is None or selection.masks[i] is None:
            return search_shard(indexes[i], q, k)
        return search_shard(indexes[i], q, k, selection.masks[i], selection.bits(i), int(selection.counts[i]))

    if pool is not None and len(indexes) > 1 and len(q) <= THREADED_MAX_QUERIES:
        parts = list(pool.map(one, range(len(indexes))))
    else:
        parts = [one(i) for i in range(len(indexes))]
    return merge_topk(parts, starts, k)
