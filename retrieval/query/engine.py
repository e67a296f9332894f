"""Search among one modality's items through the chosen backend: plain cosine top-k, or the exact
top-k of s(q, j) - scale * c_j with a method's stored per-item offsets c (DESIGN §4).

How the offset search runs depends on the backend: torch subtracts the offsets inside its matmul;
faiss searches the bias-augmented indexes with [q, scale] (and adds back the stored shift); a folder
without augmented files falls back to an exact numpy scan.

A :class:`~retrieval.query.selection.Selection` limits every path to the allowed rows (live,
captioned for text, matching a filter). Every search returns min(k, allowed rows) results per query:
queries for which the backend still found too few (after its own exhaustive retry) are answered by
an exact scan of the stored embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..methods.augmented import augment_query
from ..methods.rerank import offset_search
from .backends import FaissBackend, TorchBackend, merge_topk
from .biases import Biases
from .faiss_search import search_shards
from .selection import Selection
from .shards import ShardSet


def _ivf(index):
    """The IVF part of ``index`` (through a pre-transform), or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


@dataclass(frozen=True)
class Offset:
    """Subtract ``scale`` times the stored offsets of ``method`` ('bsap' | 'nnn') from every score."""

    method: str
    scale: float


class ModalitySearch:
    def __init__(self, shards: ShardSet, biases: Biases, modality: str, backend: str):
        self.shards, self.biases, self.modality, self.backend_name = shards, biases, modality, backend
        if backend == "torch":
            self.backend = TorchBackend(shards.embeddings(modality))
        else:
            self.backend = FaissBackend(shards.faiss[modality], shards.starts, gpu=backend == "faiss-gpu")

    def search(self, q: np.ndarray, k: int, offset: Optional[Offset] = None,
               selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of queries [n, d] among the ``selection``'s rows (all when None);
        with ``offset``, of s - scale * c exactly. Full: min(k, allowed rows) results per query."""
        if selection is not None and selection.is_everything:
            selection = None
        want = min(k, len(self.shards) if selection is None else selection.total)
        if want == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if selection is not None and self.backend_name != "torch" and self.exact_is_cheaper(selection):
            return self.exact(q, want, offset, selection)
        s, ids = self._search(q, want, offset, selection)
        short = (ids >= 0).sum(1) < want
        if short.any():
            s, ids = s.copy(), ids.copy()
            s[short], ids[short] = self.exact(q[short], want, offset, selection)
        return s, ids

    def _search(self, q: np.ndarray, k: int, offset: Optional[Offset], selection: Optional[Selection]):
        if offset is None:
            return self.backend.search(q, k, selection=selection)
        scale = float(offset.scale)
        if self.backend_name == "torch":
            return self.backend.search(q, k, scale * self.biases.all(offset.method, self.modality), selection)
        aug = self.biases.augmented(self.modality, offset.method)
        if aug is None:  # non-Flat shards without stored augmented indexes: exact numpy scan (slow)
            return self.exact(q, k, offset, selection)
        s, ids = search_shards(aug, augment_query(q, scale, aug[0].d), k, self.shards.starts, selection=selection)
        return s - np.float32(scale * self.biases.shift(offset.method, self.modality)), ids

    def exact_is_cheaper(self, selection: Selection) -> bool:
        """Whether scanning only the allowed rows reads fewer vectors than the index search would:
        an IVF shard probes nprobe x (rows / allowed) of its nlist lists (``faiss_search``)."""
        scanned = 0.0
        for i, index in enumerate(self.shards.faiss[self.modality]):
            ivf = _ivf(index)
            allowed = int(selection.counts[i])
            if ivf is None or selection.masks[i] is None or allowed == 0:
                scanned += allowed if selection.masks[i] is not None else index.ntotal
                continue
            scale = index.ntotal / allowed
            scanned += index.ntotal * min(1.0, ivf.nprobe * scale / ivf.nlist)
        return selection.total <= scanned

    def exact(self, q: np.ndarray, k: int, offset: Optional[Offset] = None,
              selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-k by a numpy scan of the stored embeddings (minus scale * offsets), reading
        only the rows ``selection`` allows."""
        embs = self.shards.embeddings(self.modality)
        if offset is None:
            offsets = [None] * len(embs)
        else:
            offsets = [offset.scale * o for o in self.biases.per_shard(offset.method, self.modality)]
        parts = []
        for i, (emb, off) in enumerate(zip(embs, offsets)):
            mask = None if selection is None else selection.masks[i]
            rows = np.arange(len(emb)) if mask is None else np.flatnonzero(mask)
            sub = emb if mask is None else emb[rows]
            o = np.zeros(len(rows), np.float32) if off is None else (off if mask is None else off[rows])
            if len(rows) == 0:
                parts.append((np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)))
                continue
            s, local = offset_search(q, sub, o, min(k, len(rows)))
            parts.append((s, rows[local]))
        s, ids = merge_topk(parts, self.shards.starts, k)
        return s, np.where(np.isfinite(s), ids, -1)

    def item_offsets(self, method: str, ids: np.ndarray) -> np.ndarray:
        """The stored offsets of ``method`` for global ``ids`` (any shape)."""
        return self.biases.gather(method, self.modality, ids)
