"""Search among one modality's items: plain cosine top-k, or the exact top-k of s(q, j) - scale * c_j
with a method's stored per-item offsets c (DESIGN §4), over the rows a selection allows.

Each shard is searched by its kind: an indexed shard through its one combined index with the query
[q, β, α] (``store.combined``; the shift taken off its scores), a Flat shard by BLAS over its npy minus the
offsets, and the torch path over every vector in one tensor. Every search returns min(k, allowed
rows) results per query: queries still short after a shard's own exhaustive retry are answered by an
exact scan of the stored vectors, and a selective selection is scanned exactly from the start when
that reads fewer vectors than the index would.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..store.combined import combine_query
from ..store.keys import pool_size
from ..methods.rerank import offset_search
from .backends import TorchBackend
from .topk import merge_topk
from .biases import Biases
from .coarse import group_of_one
from .faiss_search import THREADED_MAX_QUERIES, exact_in_lists, search_shard
from .joined import JoinedSearch
from .rescore import rescore
from .selection import Selection
from .shards import ShardSet


@dataclass(frozen=True)
class Offset:
    """Subtract ``scale`` times the stored offsets of ``method`` ('bsap' | 'nnn') from every score."""

    method: str
    scale: float


def _ivf(index):
    """The IVF part of ``index`` (through a pre-transform), or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _with_bits(mask: Optional[np.ndarray]) -> tuple:
    """(mask, its packed bits for faiss's IDSelectorBitmap), or (None, None)."""
    return mask, None if mask is None else np.packbits(mask, bitorder="little")


def _search_ivf(group, index, q: np.ndarray, k: int, mask, bits, allowed: int, need: Optional[int]):
    """``faiss_search.search_shard`` of one index, through ``group`` (the index as a coarse group of
    one, or None) where a few queries' coarse search reads the fp16 copy of the centroids: the same
    lists, scores and retries (``query.probe``, ``CoarseGroup.search``)."""
    if group is not None and group.reads_half(len(q)):
        return group.search(q, k, [mask], [bits], [allowed], need)[0]
    return search_shard(index, q, k, mask, bits, allowed, need)


def _reads(index, rows: int, allowed: int, masked: bool) -> float:
    """Vectors an index search over ``rows`` rows, ``allowed`` of them selected, reads: an IVF index
    probes nprobe x (rows / allowed) of its nlist lists (``faiss_search``); all rows when none is
    masked out (the exact scan reads as many)."""
    ivf = None if index is None else _ivf(index)
    if not masked or allowed == 0 or ivf is None:
        return allowed if masked else rows
    return rows * min(1.0, ivf.nprobe * rows / allowed / ivf.nlist)


def exact_is_cheaper(shards: ShardSet, modality: str, selection: Selection, merged=None) -> bool:
    """Whether scanning only the allowed rows reads fewer vectors than the index search would; a
    current merged index (``merged``) stands for the shards it covers, which are not loaded."""
    covered = set() if merged is None else set(merged.positions.tolist())
    scanned = 0.0 if merged is None else _reads(merged.index, int(shards.rows[merged.positions].sum()),
                                                int(selection.counts[merged.positions].sum()),
                                                any(selection.masks[i] is not None for i in covered))
    for i, s in enumerate(shards.shards):
        if i not in covered:
            masked = selection.masks[i] is not None
            index = shards.index(i, modality) if masked and selection.counts[i] and shards.has_index(i, modality) else None
            scanned += _reads(index, s["rows"], int(selection.counts[i]), masked)
    return selection.total <= scanned


def _empty(n: int):
    return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)


def _numpy_scan(vec, off: Optional[np.ndarray], q: np.ndarray, k: int, mask: Optional[np.ndarray]):
    """(scores, local ids) of the exact top-k of s - off over a shard's stored vectors ``vec`` (only
    the rows ``mask`` allows are read)."""
    if mask is None:
        x, rows = vec.all(), None
    else:
        rows = np.flatnonzero(mask)
        x = vec.rows(rows)
    o = np.zeros(len(x), np.float32) if off is None else (off if rows is None else off[rows])
    if len(x) == 0:
        return _empty(len(q))
    s, local = offset_search(q, x, o, min(k, len(x)))
    return s, (local if rows is None else rows[local])


class ModalitySearch:
    def __init__(self, shards: ShardSet, biases: Biases, modality: str, backend: str):
        self.shards, self.biases, self.modality, self.backend_name = shards, biases, modality, backend
        self._torch: Optional[TorchBackend] = None
        self._gpu: dict[int, object] = {}
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(len(shards.shards), os.cpu_count() or 1)))
        self.joined = JoinedSearch(shards, biases, modality, backend, self.pool)

    def search(self, q: np.ndarray, k: int, offset: Optional[Offset] = None,
               selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of queries [n, d] among the ``selection``'s rows (all when None);
        with ``offset``, of s - scale * c exactly. Full: min(k, allowed rows) results per query."""
        if offset is not None:
            self.biases.require()  # every method and wrapper (fusion, examples, dedup) passes here
        if selection is not None and selection.is_everything:
            selection = None
        want = min(k, len(self.shards) if selection is None else selection.total)
        if want == 0:
            return _empty(len(q))
        if self.backend_name == "torch":
            return self._torch_search(q, want, offset, selection)
        if selection is not None and self.exact_is_cheaper(selection):
            return self.exact(q, want, offset, selection)
        pool = pool_size(want) if self.shards.compressed(self.modality) else want
        need = want if pool > want else None   # a pool is best effort: short of ``want`` only is searched again
        run = (lambda i: self._shard(i, q, pool, offset, selection, need))
        merged = self.shards.merged(self.modality) if self.backend_name.startswith("faiss") else None
        todo = np.arange(len(self.shards.shards))
        if merged is not None:  # one on-disk index in place of the shards it covers (global ids)
            todo = merged.others
        todo, parts, starts = self.joined.parts(todo, q, pool, offset, selection, self._query, self._unshift, need)
        parts += list(self.pool.map(run, todo)) if len(todo) > 1 and len(q) <= THREADED_MAX_QUERIES else [run(i) for i in todo]
        starts = np.concatenate([starts, self.shards.starts[todo]])
        if merged is not None:
            parts.append(self._merged(merged, q, pool, offset, selection, need))
            starts = np.append(starts, 0)
        s, ids = merge_topk(parts, starts, pool)
        if pool > want:  # lossy codes gave the pool: scored exactly from the stored vectors
            s, ids = rescore(q, ids, want, self.shards.starts, lambda i, r: self.shards.vectors(i, self.modality).rows(r),
                             lambda i, r: self._offsets(i, offset, r))
        short = (ids >= 0).sum(1) < want
        if short.any():
            s, ids = s.copy(), ids.copy()
            s[short], ids[short] = self.exact(q[short], want, offset, selection)
        return s, ids

    def _offsets(self, i: int, offset: Optional[Offset], rows=slice(None)) -> Optional[np.ndarray]:
        return None if offset is None else offset.scale * self.biases.per_shard(offset.method, self.modality)[i][rows]

    def _shard(self, i: int, q: np.ndarray, k: int, offset: Optional[Offset], selection: Optional[Selection],
               need: Optional[int] = None):
        """(scores, local ids) of shard ``i`` (``need``: see ``faiss_search.search_shard``)."""
        mask = None if selection is None else selection.masks[i]
        allowed = int(self.shards.rows[i] if mask is None else selection.counts[i])
        if allowed == 0 or self.modality not in self.shards.shards[i]["index"]:
            return _empty(len(q))
        index = self.shards.index(i, self.modality)
        if index is None:  # a Flat shard: BLAS over its npy, the offsets subtracted
            return self._scan(i, q, k, offset, mask)
        qa, bits = self._query(q, index.d, offset), None if mask is None else selection.bits(i)
        gpu = mask is None and self.backend_name == "faiss-gpu" and k <= 2048   # its own copy, no coarse group
        group = None if gpu else group_of_one(self.shards.coarse_groups(self.modality), i)
        s, local = _search_ivf(group, self._gpu_copy(i, index) if gpu else index, qa, k, mask, bits, allowed, need)
        return self._unshift(s, offset), local

    def _query(self, q: np.ndarray, dim: int, offset: Optional[Offset]) -> np.ndarray:
        """The combined query [q, β, α] of a combined index of ``dim``."""
        bsap = offset.scale if offset is not None and offset.method == "bsap" else 0.0
        nnn = offset.scale if offset is not None and offset.method == "nnn" else 0.0
        return combine_query(q, dim, bsap, nnn)

    def _unshift(self, s: np.ndarray, offset: Optional[Offset]) -> np.ndarray:
        """Scores of a combined index with the shift taken off: the stored offsets are what the codes
        hold (quantized), so the result is exact."""
        if offset is None:
            return s
        return s - np.float32(offset.scale * self.biases.shift(offset.method, self.modality))

    def _merged(self, merged, q: np.ndarray, k: int, offset: Optional[Offset], selection: Optional[Selection],
                need: Optional[int] = None):
        """(scores, global ids) of the merged on-disk index over the shards it covers."""
        allowed = int((self.shards.rows if selection is None else selection.counts)[merged.positions].sum())
        if allowed == 0:
            return _empty(len(q))
        mask = bits = None
        if selection is not None:
            mask, bits = selection.memo(("merged", self.modality), lambda: _with_bits(
                merged.mask(self.shards.starts, self.shards.rows, selection.masks)))
        s, ids = _search_ivf(merged.group, merged.index, self._query(q, merged.index.d, offset), k, mask, bits,
                             allowed, need)
        return self._unshift(s, offset), ids

    def _scan(self, i: int, q: np.ndarray, k: int, offset: Optional[Offset], mask: Optional[np.ndarray]):
        """Exact top-k of shard ``i`` among the allowed rows: an index whose codes are its vectors scans
        the lists that hold them (``faiss_search.exact_in_lists``), else numpy over the stored vectors."""
        index = self.shards.index(i, self.modality)
        found = None if index is None else exact_in_lists(index, self._query(q, index.d, offset), k, mask)
        if found is not None:
            return self._unshift(found[0], offset), found[1]
        return _numpy_scan(self.shards.vectors(i, self.modality), self._offsets(i, offset), q, k, mask)

    def exact_is_cheaper(self, selection: Selection) -> bool:
        """``exact_is_cheaper`` for this modality (a merged index counted as the index searched)."""
        merged = self.shards.merged(self.modality) if self.backend_name.startswith("faiss") else None
        return exact_is_cheaper(self.shards, self.modality, selection, merged)

    def exact(self, q: np.ndarray, k: int, offset: Optional[Offset] = None,
              selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-k by numpy scans of the stored vectors, reading only the allowed rows."""
        parts = []
        for i, s in enumerate(self.shards.shards):
            mask = None if selection is None else selection.masks[i]
            if self.modality not in s["index"] or (mask is not None and not mask.any()):
                parts.append(_empty(len(q)))
                continue
            parts.append(self._scan(i, q, k, offset, mask))
        s, ids = merge_topk(parts, self.shards.starts, k)
        return s, np.where(np.isfinite(s), ids, -1)

    def _torch_search(self, q, k, offset, selection):
        if self._torch is None:
            self._torch = TorchBackend(self.shards.embeddings(self.modality))
        pos_to_id = np.concatenate([st + np.arange(n) for st, n in zip(self.shards.starts, self.shards.rows)])
        off = None if offset is None else offset.scale * self.biases.all(offset.method, self.modality)
        s, pos = self._torch.search(q, k, off, selection)
        return s, np.where(pos >= 0, pos_to_id[np.clip(pos, 0, None)], -1)

    def _gpu_copy(self, i: int, index):
        import faiss

        if i not in self._gpu:
            if faiss.get_num_gpus() == 0:
                raise ValueError("backend faiss-gpu requested but faiss sees no GPU")
            self._gpu[i] = faiss.index_cpu_to_all_gpus(index)
        return self._gpu[i]

    def item_offsets(self, method: str, ids: np.ndarray) -> np.ndarray:
        """The stored offsets of ``method`` for global ``ids`` (any shape)."""
        return self.biases.gather(method, self.modality, ids)
