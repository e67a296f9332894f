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
                try:
                    self._all = np.load(self.npy, mmap_mode="r")
                except Exception as e:  # noqa: BLE001 - numpy raises several kinds
                    raise IndexFolderError(f"{self.npy} is unreadable ({type(e).__name__}: {e})") from None
            else:
                index = self._index()
                self._all = decode_all(index, self._d())
        return self._all

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` as float32 [n, d], without decoding the rest."""
        rows = np.asarray(rows, np.int64)
        if self.npy is not None or self._all is not None:
            return np.asarray(self.all()[rows], np.float32)
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
                self._loaded = faiss.read_index(str(self.folder / rel), faiss.IO_FLAG_MMAP_IFC)
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


def set_offsets(index, columns: np.ndarray, d: int) -> bool:
    """Overwrite the extra coordinates (``columns`` [ntotal, 2], already -(c - shift)) of an SQfp16
    index in RAM, in place: each IVF list's codes by their ids, or HNSW's storage in id order. False
    when the index's codes cannot be rewritten (lossy keys: rebuild it instead)."""
    import faiss

    cols = np.asarray(columns, np.float16)
    ix = faiss.downcast_index(index)
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
