"""Keyword + CLIP fusion ("hybrid search"): a rerank method's ranking and the BM25 ranking of the same
rows fused into one, by reciprocal rank fusion or a weighted sum of normalised scores. Pure numpy
(``rrf``, ``weighted``) and the method object the searcher runs (``KeywordFusion``).

- RRF (Cormack et al. 2009; LanceDB's ``RRFReranker``, Milvus's ``RRFRanker``, Qdrant's ``Fusion.RRF``):
  score(d) = sum over the two lists of 1 / (k0 + rank(d)), ranks from 1, k0 = 60; a row in one list
  only gets that list's term.
- weighted (LanceDB's ``LinearCombinationReranker``, Milvus's ``WeightedRanker``): each list's scores
  min-max normalised to [0, 1] over its candidates (a row absent from a list gets 0 there), then
  (1 - w) * vector + w * keyword.
Both lists are drawn from the same selection (live rows, ``where``), each ``max(k, pool)`` long, so the
fused list holds k rows whenever k rows qualify (the vector list alone does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .keyword import parse

FUSIONS = ("rrf", "weighted")
RRF_K = 60
POOL = 100


def _valid(s: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ids >= 0
    return s[keep], ids[keep]


def rrf(lists: list[tuple[np.ndarray, np.ndarray]], k0: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """(fused scores, ids) best first, from ranked (scores, ids) lists of one query (ids -1 ignored)."""
    total: dict[int, float] = {}
    for s, ids in lists:
        for rank, i in enumerate(_valid(s, ids)[1].tolist(), 1):
            total[i] = total.get(i, 0.0) + 1.0 / (k0 + rank)
    return _ranked(total)


def weighted(lists: list[tuple[np.ndarray, np.ndarray]], weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(fused scores, ids) best first: the weighted sum of each list's min-max normalised scores."""
    total: dict[int, float] = {}
    for (s, ids), w in zip(lists, weights):
        s, ids = _valid(s, ids)
        if not len(ids):
            continue
        lo, hi = float(s.min()), float(s.max())
        norm = (s - lo) / (hi - lo) if hi > lo else np.ones(len(s))
        for i, v in zip(ids.tolist(), norm.tolist()):
            total[i] = total.get(i, 0.0) + w * v
    return _ranked(total)


def _ranked(total: dict) -> tuple[np.ndarray, np.ndarray]:
    if not total:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    ids = np.fromiter(total, np.int64, len(total))
    s = np.fromiter(total.values(), np.float64, len(total))
    order = np.lexsort((ids, -s))  # ties: the smaller id first, the same every time
    return s[order].astype(np.float32), ids[order]


@dataclass(frozen=True)
class KeywordFusion:
    """``inner`` (any rerank method) fused with BM25 over ``texts`` (one keyword query per query row)."""

    inner: object
    keywords: object          # query.keyword.KeywordIndex
    texts: tuple
    fusion: str = "rrf"
    weight: float = 0.5       # of the keyword side, for "weighted"
    pool: int = POOL

    def search(self, engine, q: np.ndarray, k: int, selection=None):
        n = max(k, self.pool)
        vs, vi = self.inner.search(engine, q, n, selection)
        ks, ki = self.keywords.search(list(self.texts), n, selection)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            lists = [(vs[r], vi[r]), (ks[r], ki[r])]
            s, ids = rrf(lists) if self.fusion == "rrf" else weighted(lists, [1.0 - self.weight, self.weight])
            m = min(k, len(ids))
            out_s[r, :m], out_i[r, :m] = s[:m], ids[:m]
        return out_s, out_i


def with_keywords(method, keywords, text_match, n_queries: int, fusion: str = "rrf",
                  keyword_weight: Optional[float] = None) -> KeywordFusion:
    """``method`` fused with the keyword queries ``text_match`` (one per query row; a string for one
    row), checked first: ValueError for a bad fusion, weight, count or keyword syntax."""
    check_fusion(fusion, keyword_weight)
    texts = [text_match] if isinstance(text_match, str) else list(text_match)
    if len(texts) != n_queries:
        raise ValueError(f"give one keyword query per query row: {len(texts)} for {n_queries}")
    for t in texts:
        parse(t)
    return KeywordFusion(method, keywords, tuple(texts), fusion, 0.5 if keyword_weight is None else float(keyword_weight))


def check_fusion(fusion: str, weight: Optional[float]) -> None:
    """ValueError for an unknown fusion or a keyword weight outside [0, 1]."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not 0.0 <= float(weight) <= 1.0):
        raise ValueError(f"keyword_weight must be a number in [0, 1], got {weight!r}")
