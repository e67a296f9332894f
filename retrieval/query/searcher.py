"""The searcher: checks a query batch, then runs a rerank method on the target modality's engine."""
from __future__ import annotations

from typing import Callable, Optional

import numbers

import numpy as np

from ..store.layout import MODALITIES
from .biases import Biases
from .engine import ModalitySearch
from .selection import Selection
from .shards import ShardSet


def check_k(k) -> None:
    """ValueError unless ``k`` is a positive integer (bools are not)."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")


EngineFactory = Callable[[ShardSet, Biases, str, str], object]


class Searcher:
    def __init__(self, shards: ShardSet, biases: Biases, backend: str, engines: Optional[EngineFactory] = None):
        """``engines(shards, biases, modality, backend)`` builds each modality's engine instead of
        :class:`ModalitySearch` (e.g. ``scale.ray_serve``'s fan-out to remote shard groups)."""
        self.shards, self.biases, self.backend = shards, biases, backend
        self._factory = engines or ModalitySearch
        self._engines: dict[str, ModalitySearch] = {}

    def engine(self, modality: str) -> ModalitySearch:
        """The search engine of ``modality`` (built on first use)."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if modality not in self._engines:
            self._engines[modality] = self._factory(self.shards, self.biases, modality, self.backend)
        return self._engines[modality]

    def search(self, queries: np.ndarray, k: int, target: str, method,
               selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of L2-normalised ``queries`` [n, d] among ``target`` items (those
        ``selection`` allows)."""
        if target not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {target!r}")
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.shards.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, index has {self.shards.dim}")
        check_k(k)
        if not np.isfinite(q).all():
            raise ValueError("query embeddings hold NaN or infinite values")
        if not np.any(q, axis=1).all():
            raise ValueError(f"query {int(np.flatnonzero(~np.any(q, axis=1))[0])} is all zeros: it has no direction to search")
        return method.search(self.engine(target), q, k, selection)
