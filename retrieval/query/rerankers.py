"""Rerank methods as objects the searcher calls: ``method.search(engine, q, k, selection) -> (scores,
global ids)``, the selection (allowed rows) passed down to every engine search.

- :class:`Clip`: cosine top-k.
- :class:`ExactBSAP`, :class:`ExactHybrid`, :class:`ExactNNN`: the exact whole-corpus forms (s - w c_j
  with stored offsets), scores reported as b_j for BSAP, s - (1-λ) c_j for BSAP-H and s - α bias for NNN.
- :class:`Candidates`: rerank CLIP's top N with any method, from one stored scalar per candidate.

A new method is a class with ``search`` plus a branch in :func:`make_method` (see ARCHITECTURE.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..methods.dedup import keep_mask
from ..methods.rerank import DEFAULT_LAM, METHODS, bsap_from_offsets, hybrid_from_offsets, top_k
from .engine import ModalitySearch, Offset
from .selection import Selection

HYBRID_CANDIDATES = 1000  # the candidate count when a method reranks CLIP's top N without N given


@dataclass(frozen=True)
class Clip:
    def search(self, engine: ModalitySearch, q: np.ndarray, k: int, selection: Optional[Selection] = None):
        return engine.search(q, k, selection=selection)


@dataclass(frozen=True)
class ExactBSAP:
    tau: float

    def search(self, engine: ModalitySearch, q: np.ndarray, k: int, selection: Optional[Selection] = None):
        s, ids = engine.search(q, k, Offset("bsap", 1.0), selection)
        return bsap_from_offsets(s, 0.0, self.tau), ids


@dataclass(frozen=True)
class ExactHybrid:
    lam: float

    def search(self, engine: ModalitySearch, q: np.ndarray, k: int, selection: Optional[Selection] = None):
        return engine.search(q, k, Offset("bsap", 1.0 - self.lam), selection)


@dataclass(frozen=True)
class ExactNNN:
    alpha: float

    def search(self, engine: ModalitySearch, q: np.ndarray, k: int, selection: Optional[Selection] = None):
        return engine.search(q, k, Offset("nnn", self.alpha), selection)


@dataclass(frozen=True)
class Candidates:
    """``method`` over CLIP's top ``n`` (None: max(k, HYBRID_CANDIDATES))."""

    method: str
    n: Optional[int]
    tau: float
    lam: float = DEFAULT_LAM
    alpha: float = 0.75

    def search(self, engine: ModalitySearch, q: np.ndarray, k: int, selection: Optional[Selection] = None):
        s, cand = engine.search(q, max(self.n or HYBRID_CANDIDATES, k), selection=selection)
        if (cand < 0).any():  # fewer results than asked (approximate indexes): keep the valid ones
            n_valid = int((cand >= 0).sum(1).min())
            s, cand = s[:, :n_valid], cand[:, :n_valid]
        best, pos = top_k(self.rescore(engine, s, cand), k)
        return best, np.take_along_axis(cand, pos, 1)

    def rescore(self, engine: ModalitySearch, s: np.ndarray, cand: np.ndarray) -> np.ndarray:
        if self.method == "clip":
            return s
        if self.method == "nnn":
            return s - self.alpha * engine.item_offsets("nnn", cand)
        c = engine.item_offsets("bsap", cand)
        return hybrid_from_offsets(s, c, self.lam) if self.method == "hybrid" else bsap_from_offsets(s, c, self.tau)


@dataclass(frozen=True)
class Deduplicated:
    """``inner``'s ranking with near-duplicates collapsed (``methods.dedup``), still k results when
    k distinct groups exist: fetches 2k + 16, then twice as many until full."""

    inner: object
    threshold: float

    def search(self, engine: ModalitySearch, q: np.ndarray, k: int, selection: Optional[Selection] = None):
        total = len(engine.shards) if selection is None else selection.total
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        todo, fetch = np.arange(len(q)), min(total, 2 * k + 16)
        while len(todo):
            s, ids = self.inner.search(engine, q[todo], fetch, selection)
            done = []
            for r, row in enumerate(todo):
                valid = ids[r] >= 0
                keep = np.flatnonzero(valid)[keep_mask(engine.shards.gather(ids[r][valid], engine.modality),
                                                       ids[r][valid], self.threshold)][:k]
                if len(keep) == k or fetch >= total:
                    out_s[row, :len(keep)], out_i[row, :len(keep)] = s[r, keep], ids[r, keep]
                    done.append(r)
            todo = np.delete(todo, done)
            fetch = min(total, fetch * 2)
        return out_s, out_i


def make_method(rerank: str, tau: float, candidates: Optional[int] = None, lam: float = DEFAULT_LAM,
                alpha: float = 0.75):
    """The method object for ``rerank`` ('clip' | 'bsap' | 'hybrid' | 'nnn'); exact over the whole
    corpus unless ``candidates`` is given."""
    if rerank == "comclip":
        raise ValueError("comclip reranks with the query's text and the candidates' images, not a vector: "
                         "use Index.query(text=..., rerank='comclip') or index.search(text).rerank('comclip')")
    if rerank not in METHODS:
        raise ValueError(f"unknown rerank method {rerank!r}; choose one of {', '.join(METHODS)}")
    if candidates is not None and candidates <= 0:
        raise ValueError(f"candidates must be positive, got {candidates}")
    for name, v in (("tau", tau), ("lam", lam), ("alpha", alpha)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if candidates is not None:
        return Candidates(rerank, candidates, tau, lam, alpha)
    if rerank == "bsap":
        return ExactBSAP(tau)
    if rerank == "hybrid":
        return ExactHybrid(lam)
    if rerank == "nnn":
        return ExactNNN(alpha)
    return Clip()
