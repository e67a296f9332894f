"""Exact re-scoring of a compressed index's candidates (the scale issue's "compressed and exact").

Shards of a lossy key (``IVF{nlist},PQ{M}``: ``store.keys``) keep their fp16 vectors in an npy file
(memory-mapped: read per candidate, file-backed pages). Their codes give a pool of candidates by an
approximate score of the query's method (the offsets coordinates are coded too, ``store.combined``);
the pool is then scored exactly, q·e - scale·c with the stored offsets, and its top k returned. The
results are exact whenever the exact top k is in the pool: ``store.keys.pool_size`` is the rule, and
scripts/bench_scale.py measures the recall against exact search over the same vectors and offsets.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..methods.rerank import top_k

QUERY_BLOCK = 64   # queries re-scored at a time (bounds the gathered [block x pool, d] rows)


def rescore(q: np.ndarray, ids: np.ndarray, k: int, starts: np.ndarray,
            rows_of: Callable[[int, np.ndarray], np.ndarray],
            offsets_of: Callable[[int, np.ndarray], Optional[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` (scores, global ids) among candidate global ``ids`` [n, pool] (-1: none) of
    queries ``q`` [n, d]. ``starts``: each shard's first global id; ``rows_of(shard,
    local rows)``: their stored vectors as float32 [m, d]; ``offsets_of(shard, local rows)``: scale x
    the method's offsets of those rows, or None (plain CLIP)."""
    n = len(q)
    order = np.argsort(starts, kind="stable")
    sorted_starts = np.asarray(starts)[order]
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    for lo in range(0, n, QUERY_BLOCK):
        hi = min(n, lo + QUERY_BLOCK)
        cand = np.ascontiguousarray(ids[lo:hi])
        flat = cand.ravel()
        scores = np.full(flat.shape, -np.inf, np.float32)
        where = np.flatnonzero(flat >= 0)
        cells = where[np.argsort(flat[where], kind="stable")]   # one sort of the block: reads in id order
        glob = flat[cells]
        shard = order[np.maximum(np.searchsorted(sorted_starts, glob, side="right") - 1, 0)]
        cuts = (np.concatenate([[0], np.flatnonzero(np.diff(shard)) + 1, [len(glob)]]) if len(glob)
                else np.zeros(1, np.int64))                      # a block without candidates: no shard
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):   # one shard's candidates
            p, part = int(shard[a]), cells[a:b]
            local = glob[a:b] - starts[p]
            first = np.concatenate([[True], local[1:] != local[:-1]])
            uniq, inv = local[first], np.cumsum(first) - 1     # each row read once
            vecs = rows_of(p, uniq)
            s = np.einsum("ij,ij->i", vecs[inv], q[lo + part // cand.shape[1]], dtype=np.float32)
            off = offsets_of(p, uniq)
            if off is not None:
                s -= off[inv]
            scores[part] = s
        scores = scores.reshape(cand.shape)
        best, pos = top_k(scores, k)
        got = np.take_along_axis(cand, pos, 1)
        out_s[lo:hi, :best.shape[1]] = best
        out_i[lo:hi, :best.shape[1]] = np.where(np.isfinite(best), got, -1)
    return out_s, out_i
