"""Where a shard's vectors live: stored once, in the index codes or in an npy file, never both.

- ``Flat`` shards have no faiss index: the fp16 npy (clip-retrieval's layout) is searched with BLAS.
- IVF and HNSW shards store ``SQfp16`` codes of the combined vectors (``store.combined``): exactly
  the fp16 values, so the index is the only copy and vectors are decoded from it when needed.
  A requested ``...,Flat`` (fp32) storage is built as ``SQfp16``: half the bytes, faster to scan,
  and the same values, since the embeddings are fp16 to begin with.
- Lossy keys (PQ, OPQ, SQ8) cannot give the vectors back: those shards keep the npy too.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from .cast import IMPORT_VALUES, cast
from .coarse import read_index
from .layout import EMB_FILE, INDEX_FILE


def built_key(key: str) -> str:
    """The faiss key built for a shard the rule (or the user) gives ``key``."""
    m = re.fullmatch(r"(IVF\d+(?:_HNSW\d+)?|HNSW\d+)(?:,Flat)?", key)
    return f"{m.group(1)},SQfp16" if m else key


def keeps_npy(key: str) -> bool:
    """Whether a shard of (built) ``key`` keeps its vectors in npy files (no index, or lossy codes)."""
    return key == "Flat" or not key.endswith("SQfp16")


def decode_all(index, d: int) -> np.ndarray:
    """Every vector of an SQfp16 index, in id order, as fp16 [n, d] (the extra coordinates dropped)."""
    import faiss

    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexHNSW):
        st = faiss.downcast_index(ix.storage)
        codes = faiss.rev_swig_ptr(st.codes.data(), st.ntotal * st.code_size)
        return codes.view(np.float16).reshape(st.ntotal, -1)[:, :d].copy()  # a copy: the index may be freed
    ivf = faiss.extract_index_ivf(index)
    inv = ivf.invlists
    out = np.empty((ivf.ntotal, d), np.float16)
    for lst in range(inv.nlist):
        n = inv.list_size(lst)
        if n:
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size).view(np.float16).reshape(n, -1)
            out[faiss.rev_swig_ptr(inv.get_ids(lst), n)] = codes[:, :d]
    return out


def decode_rows(index, rows: np.ndarray, d: int) -> np.ndarray:
    """Vectors of local ``rows`` of an SQfp16 index as float32 [n, d] (an IVF's direct map built once)."""
    import faiss

    ix = faiss.downcast_index(index)
    if not isinstance(ix, faiss.IndexHNSW):
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type == 0:  # NoMap
            ivf.make_direct_map()
    rows = np.ascontiguousarray(rows, np.int64)
    if len(rows) == 0:
        return np.zeros((0, d), np.float32)
    return index.reconstruct_batch(rows)[:, :d]


class ShardVectors:
    """One shard's stored vectors of one modality, from its npy or decoded from its index."""

    def __init__(self, folder: Path, shard: dict, modality: str, index_loader=None):
        self.folder, self.shard, self.modality = Path(folder), shard, modality
        self.dim = None
        self._index_loader = index_loader  # () -> the shard's faiss index (default: its file, mmapped)
        self._loaded = None
        self._all: Optional[np.ndarray] = None

    @property
    def npy(self) -> Optional[Path]:
        rel = self.shard["files"].get(EMB_FILE[self.modality])
        return None if rel is None else self.folder / rel

    def all(self) -> np.ndarray:
        """Every row [rows, d] (fp16: a memory map of the npy, or decoded once from the codes)."""
        if self._all is None:
            if self.npy is not None:
                try:   # a plain view of the map: np.memmap's own indexing costs ~7 us a call
                    self._all = np.asarray(np.load(self.npy, mmap_mode="r"))
                except Exception as e:  # noqa: BLE001 - numpy raises several kinds
                    raise IndexFolderError(f"{self.npy} is unreadable ({type(e).__name__}: {e})") from None
            else:
                index = self._index()
                self._all = decode_all(index, self._d())
        return self._all

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` as float32 [n, d], without decoding the rest."""
        rows = np.asarray(rows, np.int64)
        if self._all is not None or self.npy is not None:
            # torch only for a training sample's size: queries read rows here between BLAS calls
            return cast(self.all()[rows], np.float32, min_values=IMPORT_VALUES)
        return decode_rows(self._index(), rows, self._d())

    def _index(self):
        if self._loaded is None:
            if self._index_loader is not None:
                self._loaded = self._index_loader()
            else:
                import faiss

                rel = self.shard["files"].get(INDEX_FILE[self.modality])
                if rel is None:
                    raise IndexFolderError(f"shard {self.shard['id']} keeps no {self.modality} vectors")
                self._loaded = read_index(self.folder, rel, self.shard["index"][self.modality], faiss.IO_FLAG_MMAP_IFC)
        return self._loaded

    def _d(self) -> int:
        return int(self.shard["dim"])


def read_all(folder: str | os.PathLike, shard: dict, modality: str) -> np.ndarray:
    """A shard's vectors of ``modality`` (fp16 [rows, d]) for writers: the npy, or the index decoded."""
    return np.asarray(ShardVectors(Path(folder), shard, modality).all())


def fp16_vector_codes(ivf) -> bool:
    """Whether IVF index ``ivf`` (downcast) stores its vectors as its codes: SQfp16, not by residual
    (decodable, patchable in place, scannable without a coarse distance)."""
    import faiss

    return (isinstance(ivf, faiss.IndexIVFScalarQuantizer) and ivf.sq.qtype == faiss.ScalarQuantizer.QT_fp16
            and not ivf.by_residual)


def set_offsets(index, columns: np.ndarray, d: int, bounds: Optional[list] = None) -> bool:
    """Overwrite the extra coordinates (``columns`` [ntotal, 2], already -(c - shift)) of an SQfp16
    index in RAM, in place: each IVF list's codes by their ids, or HNSW's storage in id order. False
    when the index's codes cannot be rewritten (other lossy keys: rebuild it instead). An IVF-PQ index
    whose offsets coordinates fill its last sub-vector (``store.keys``) gets that sub-quantizer refit
    to them and that one sub-code of each vector rewritten (``set_pq_offsets``)."""
    import faiss

    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexIVFPQ):   # coded on a grid of the float32 values, not stored as fp16
        return set_pq_offsets(ix, np.asarray(columns, np.float32), d, bounds)
    cols = np.asarray(columns, np.float16)
    if isinstance(ix, faiss.IndexHNSW):
        st = faiss.downcast_index(ix.storage)
        if not isinstance(st, faiss.IndexScalarQuantizer) or st.sq.qtype != faiss.ScalarQuantizer.QT_fp16:
            return False
        codes = faiss.rev_swig_ptr(st.codes.data(), st.ntotal * st.code_size).view(np.float16)
        codes.reshape(st.ntotal, -1)[:, d:d + 2] = cols
        return True
    if not fp16_vector_codes(ix):
        return False
    inv = ix.invlists
    for lst in range(inv.nlist):
        n = inv.list_size(lst)
        if n:
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size).view(np.float16).reshape(n, -1)
            codes[:, d:d + 2] = cols[faiss.rev_swig_ptr(inv.get_ids(lst), n)]
    return True


def offsets_grid(cols: np.ndarray, levels: int, bounds: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """A uniform grid of at most ``levels`` points over the 2-D offsets ``cols`` [n, 2] and each row's
    point (its index). The grid splits the levels between the axes so that the larger step is the
    smallest: every value, the tails included (BSAP's best results are its lowest offsets), is off by
    at most half a step per axis, unlike k-means centroids, which follow the density. ``bounds``
    ([[lo, lo], [hi, hi]]: a folder's, ``offsets_bounds``) fixes the grid whatever ``cols`` holds (a
    value outside is coded at the nearest edge); default: ``cols``' own range."""
    if bounds is not None:
        lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    else:
        lo, hi = cols.min(0) if len(cols) else np.zeros(2), cols.max(0) if len(cols) else np.zeros(2)
    span = np.maximum(hi - lo, 1e-12)
    splits = [(a, levels // a) for a in (2 ** i for i in range(int(np.log2(levels)) + 1))]
    na, nb = min(splits, key=lambda s: max(span[0] / s[0], span[1] / s[1]))
    steps = span / np.array([na, nb])
    ia = np.clip(((cols[:, 0] - lo[0]) / steps[0]).astype(np.int64), 0, na - 1)
    ib = np.clip(((cols[:, 1] - lo[1]) / steps[1]).astype(np.int64), 0, nb - 1)
    ga, gb = np.meshgrid(lo[0] + (np.arange(na) + 0.5) * steps[0], lo[1] + (np.arange(nb) + 0.5) * steps[1],
                         indexing="ij")
    grid = np.zeros((levels, 2), np.float32)
    grid[:na * nb] = np.stack([ga.ravel(), gb.ravel()], 1)
    grid[na * nb:] = grid[0]
    return grid, (ia * nb + ib).astype(np.uint8 if levels <= 256 else np.int64)


def pq_extras_layout(ivfpq, d: int) -> bool:
    """Whether an IVF-PQ index (downcast) over combined vectors of item dim ``d`` holds the offsets
    coordinates alone in its last sub-vector, coded in bytes (the layout ``store.keys`` chooses)."""
    pq = ivfpq.pq
    return pq.nbits == 8 and pq.dsub * (pq.M - 1) == d and ivfpq.d == pq.dsub * pq.M and pq.dsub >= 2


def offsets_bounds(columns) -> Optional[list]:
    """[[lo, lo], [hi, hi]] of the offsets coordinates over every array of ``columns`` ([n, 2] each):
    one grid for all of a folder's shards, so their IVF-PQ codecs stay equal (``ops.merge``)."""
    lo = hi = None
    for c in columns:   # one array at a time: a folder's columns are never all held
        if len(c):
            lo = c.min(0) if lo is None else np.minimum(lo, c.min(0))
            hi = c.max(0) if hi is None else np.maximum(hi, c.max(0))
    return None if lo is None else [np.asarray(lo, np.float64).tolist(), np.asarray(hi, np.float64).tolist()]


def set_pq_offsets(ivfpq, columns: np.ndarray, d: int, bounds: Optional[list] = None) -> bool:
    """Refit the last sub-quantizer of an IVF-PQ index to ``columns`` ([ntotal, 2]: the offsets
    coordinates by id; a grid, ``offsets_grid``, over ``bounds`` when given: the folder's) and
    rewrite each vector's last sub-code in place (the other M - 1 sub-codes, the lists and the coarse
    quantizer do not change). False when the layout is not ``pq_extras_layout``'s."""
    import faiss

    if not pq_extras_layout(ivfpq, d):
        return False
    pq, inv = ivfpq.pq, ivfpq.invlists
    dsub, ksub, m = pq.dsub, pq.ksub, pq.M
    coarse = faiss.rev_swig_ptr(faiss.downcast_index(ivfpq.quantizer).get_xb(), ivfpq.nlist * ivfpq.d)
    coarse = coarse.reshape(ivfpq.nlist, ivfpq.d)[:, d:d + dsub]        # zeros when trained without offsets
    lists = [(lst, inv.list_size(lst)) for lst in range(inv.nlist)]
    lists = [(lst, n, faiss.rev_swig_ptr(inv.get_ids(lst), n).copy()) for lst, n in lists if n]
    residual = np.zeros((len(columns), dsub), np.float32)
    residual[:, :2] = columns
    for lst, _, ids in lists:
        residual[ids] -= coarse[lst] if ivfpq.by_residual else 0
    centroids = faiss.rev_swig_ptr(pq.centroids.data(), m * ksub * dsub).reshape(m, ksub, dsub)
    fit, code = offsets_grid(residual[:, :2], ksub, bounds)
    fit = np.pad(fit, ((0, 0), (0, dsub - 2)))
    centroids[m - 1] = fit
    if pq.transposed_centroids.size():
        pq.sync_transposed_centroids()
    for lst, n, ids in lists:
        codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size).reshape(n, inv.code_size)
        codes[:, m - 1] = code[ids]
    if ivfpq.use_precomputed_table and ivfpq.metric_type == faiss.METRIC_L2:
        ivfpq.precompute_table()
    return True
