"""The coarse search of a few queries read from an fp16 copy of the centroids, proved equal to the flat one.

A single query's coarse search reads every centroid: at 3M rows, 8,192 lists x 528 float32 are 17 MB,
out of cache, ~0.45 ms of a ~0.9 ms query (docs/benchmarks.md, "Where a 3M single query's time
goes"). Half the bytes (faiss's fp16 scalar quantizer over the same centroids) give nprobe + EXTRA
candidates; those are scored again with the float32 centroids (faiss's own inner product) and the
best nprobe kept. Here (``CoarseSearch.search``) the result is the flat search's whenever a bound
proves it: every centroid left out scores at most its fp16 score plus the copy's error
(``error_bound``), which must fall below the nprobe-th exact score. A query without that proof (or
with a tie at the cut) is searched by the flat index; so is a batch (past FP16_MAX_QUERIES faiss's
flat search is one BLAS product). faiss's own joined search (IndexShardsIVF) takes a quantizer index,
not a function: it gets faiss's IndexRefine of the same two (``CoarseSearch.index``), the same
candidates and exact scores without the proof (same lists as the flat search for 1,000 of 1,000
queries at 3M; a miss probes another near list, as any IVF probe may).
"""
from __future__ import annotations

import numpy as np

FP16_MIN_LISTS = 2_048   # one query, 528-d: 1,024 lists 36 vs 37 µs (flat vs fp16), 2,048: 75 vs 65,
                         # 4,096: 146 vs 121, 8,192: 336 vs 231 (scripts/query_parts.py measures it)
FP16_MAX_QUERIES = 16    # faiss's flat search of 20 queries or more is a BLAS product
EXTRA = 16               # candidates scored again beyond nprobe (1M and 3M folders, nprobe 1 / 2 / 8, CLIP,
                         # BSAP and NNN queries: 9,000 of 9,000 proved with 8 or 16)
BLOCK = 16               # faiss scans fp16 codes in SIMD blocks of 16 floats; other widths fall back to a
                         # scalar loop (4,096 lists, one query: 516-d 2.6 ms, 520-d 0.25, 528-d 0.17): the
                         # copy is zero-padded to a whole number of blocks (IVF-PQ's 516-d layout)


def fp16_pays(nlist: int, n_queries: int, nprobe: int) -> bool:
    """Whether ``n_queries`` queries probing ``nprobe`` of ``nlist`` inner-product centroids read the
    fp16 copy first (pure in its sizes)."""
    return nlist >= FP16_MIN_LISTS and 0 < n_queries <= FP16_MAX_QUERIES and nprobe + EXTRA < nlist


def error_bound(centroids: np.ndarray, decoded: np.ndarray) -> float:
    """A bound on |<q, c> - <q, c16>| / |q| over the centroids ``c`` and their decoded fp16 copies
    ``c16``, both as computed in float32: the rounding of the copy plus two float32 sums of d terms
    (d * 2**-23 of |q| |c| each, a generous bound for faiss's SIMD sums)."""
    d = centroids.shape[1]
    rounding = float(np.linalg.norm(centroids - decoded, axis=1).max(initial=0.0))
    largest = float(np.linalg.norm(centroids, axis=1).max(initial=0.0))
    return rounding + 2.0 * d * 2.0 ** -23 * largest * 1.01


class CoarseSearch:
    """``search(q, nprobe) -> (scores, lists)`` of IVF quantizer ``quantizer`` (held, not copied):
    the flat index's own search, or for a few queries over many inner-product centroids, the fp16
    copy's candidates scored exactly (the same lists and scores as the flat search)."""

    def __init__(self, quantizer):
        import faiss

        self._held = quantizer   # a Python-owned quantizer lives as long as this search
        self.flat = faiss.downcast_index(quantizer)
        self.half = None
        nlist = self.flat.ntotal
        inner = isinstance(self.flat, faiss.IndexFlat) and self.flat.metric_type == faiss.METRIC_INNER_PRODUCT
        if inner and nlist >= FP16_MIN_LISTS:
            d = self.flat.d
            self.width = -(-d // BLOCK) * BLOCK
            self._cent = faiss.rev_swig_ptr(self.flat.get_xb(), nlist * d).reshape(nlist, d)
            padded = np.zeros((nlist, self.width), np.float32)
            padded[:, :d] = self._cent
            half = faiss.IndexScalarQuantizer(self.width, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            half.train(padded[:1])   # fp16 codes need no statistics; this marks the index trained
            half.add(padded)
            self.error = error_bound(self._cent, half.reconstruct_n(0, nlist)[:, :d])
            self.half = half
            # the copy as faiss searches it with d-wide queries: zeros appended (faiss RemapDimensionsTransform)
            self._pad = None if self.width == d else faiss.RemapDimensionsTransform(d, self.width, False)
            self._base = half if self._pad is None else faiss.IndexPreTransform(self._pad, half)

    def index(self, nprobe: int):
        """A faiss index searching like this one for ``nprobe`` probes, for faiss's own searches: the
        flat quantizer, or faiss's IndexRefine of the fp16 copy (nprobe + EXTRA candidates; queries
        zero-padded to it) and the flat quantizer (all held here; neither is copied)."""
        import faiss

        if self.half is None or nprobe + EXTRA >= self.flat.ntotal:
            return self.flat
        refine = faiss.IndexRefine(self._base, self.flat)
        refine.k_factor = (nprobe + EXTRA) / nprobe
        return refine

    def search(self, q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, lists) [n, nprobe] of queries ``q`` [n, d], best first."""
        q = np.ascontiguousarray(q, np.float32)
        if self.half is None or not fp16_pays(self.flat.ntotal, len(q), nprobe):
            return self.flat.search(q, nprobe)
        import faiss

        n, m = len(q), nprobe + EXTRA
        wide = q
        if self.width != q.shape[1]:
            wide = np.zeros((n, self.width), np.float32)
            wide[:, :q.shape[1]] = q
        approx, cand = self.half.search(wide, m)
        exact = np.empty((n, m), np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(exact), faiss.swig_ptr(q), faiss.swig_ptr(self._cent),
                                         faiss.swig_ptr(cand), self.flat.d, n, m)
        order = np.argsort(-exact, axis=1, kind="stable")
        rows = np.arange(n)[:, None]
        ranked = exact[rows, order]
        scores, lists = ranked[:, :nprobe].copy(), cand[rows, order[:, :nprobe]]
        left_out = approx[:, -1] + self.error * np.sqrt(np.einsum("ij,ij->i", q, q))
        proved = (scores[:, -1] > left_out) & (ranked[:, nprobe] < scores[:, -1])   # no tie at the cut
        if not proved.all():
            again = np.flatnonzero(~proved)
            scores[again], lists[again] = self.flat.search(q[again], nprobe)
        return scores, lists
