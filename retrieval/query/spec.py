"""One query, whatever asks it: the CLI, ``Index.query``, the fluent builder and the HTTP service all
fill a :class:`QuerySpec` and run it here, so the four cannot drift.

A query is one of three kinds:
- ``vector``: texts, image files or bytes, embeddings or a stored item, searched with a rerank method,
  optionally fused with keywords (``hybrid``);
- ``examples``: positive and negative examples combined by a strategy (``query.examples``);
- ``keyword``: ``text_match`` alone (BM25).
Every kind takes ``where``, ``k`` and ``min_score`` (a number on the method's own score, or
``"auto"``: the floor ``retrieval bias`` recorded from the index's non-matching pairs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

import numpy as np

from ..store.masks import find_keys
from .comclip import CANDIDATES, MAX_CANDIDATES, ComclipOptions, ComclipReranker
from .encode import query_vectors
from .examples import STRATEGIES, check_strategy, example_kind
from .fusion import FUSIONS
from .topk import above

AUTO = "auto"
COMCLIP = "comclip"


@dataclass
class QuerySpec:
    text: Union[str, list, None] = None
    image: Any = None                      # a path, bytes, or a list of them
    embedding: Optional[np.ndarray] = None
    item_id: Optional[int] = None          # "more like this": the stored image embedding of a row
    positive: tuple = ()
    negative: tuple = ()
    strategy: str = "average_vector"
    text_match: Union[str, list, None] = None
    hybrid: bool = False
    fusion: str = "rrf"
    keyword_weight: Optional[float] = None
    k: int = 10
    target: str = "image"
    rerank: str = "clip"
    candidates: Optional[int] = None
    lam: Optional[float] = None
    alpha: float = 0.75
    tau: Optional[float] = None
    where: Optional[str] = None
    dedup: Optional[float] = None
    captioned: bool = False
    min_score: Union[float, str, None] = None
    comclip: Optional[ComclipOptions] = None   # rerank="comclip": weighting, parses, regions (None: defaults)
    return_embeddings: bool = False
    extra: dict = field(default_factory=dict)

    def given(self) -> list[str]:
        return [n for n in ("text", "image", "embedding", "item_id") if getattr(self, n) is not None]

    @property
    def kind(self) -> str:
        if self.positive or self.negative:
            return "examples"
        if not self.given() and self.text_match is not None:
            return "keyword"
        return "vector"

    def check(self) -> "QuerySpec":
        """ValueError (one line) for a combination that cannot run."""
        given = self.given()
        if len(given) > 1:
            raise ValueError(f"give exactly one of text, image, embedding or item_id, got {', '.join(given)}")
        if self.kind == "vector" and not given:
            raise ValueError("give a text, image, embedding or item_id query, examples, or text_match alone")
        if self.negative and not (self.positive or given):
            raise ValueError("negative examples need a positive example or a query to move away from")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.kind == "examples":
            check_strategy(self.strategy, self.rerank, self.candidates)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.kind == "keyword" and self.hybrid:
            raise ValueError("hybrid needs a text, image or embedding query (or examples) besides text_match")
        if self.text_match is not None and self.kind != "keyword" and not self.hybrid:
            raise ValueError("text_match with another query needs hybrid (or drop the other query for a keyword search)")
        if self.hybrid and self.text_match is None and not isinstance(self.text, str):
            raise ValueError("hybrid needs text_match (or a text query to match as keywords)")
        if self.rerank == COMCLIP:
            self._check_comclip()
        if isinstance(self.min_score, str) and self.min_score != AUTO:
            raise ValueError(f"min_score is a number or 'auto', got {self.min_score!r}")
        if self.min_score == AUTO and (self.hybrid or self.kind == "examples" and self.strategy != "average_vector"):
            raise ValueError("min_score 'auto' is a floor on a rerank method's own score: not for hybrid (fused) "
                             f"or {self.strategy} scores; pass a number")
        return self

    def _check_comclip(self) -> None:
        texts = [self.text] if isinstance(self.text, str) else self.text
        if self.kind != "vector" or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("comclip reranks a text query's candidates by the caption's parts: give a text "
                             "(not an image, embedding, item or examples)")
        if self.hybrid or self.target != "image" or self.min_score == AUTO:
            raise ValueError("comclip ranks images for a text: not with hybrid, target 'text' or min_score 'auto'")
        if max(self.k, self.candidates or CANDIDATES) > MAX_CANDIDATES:
            raise ValueError(f"comclip reranks at most {MAX_CANDIDATES} candidates per query (k and candidates): "
                             "each one's image is read and encoded region by region")
        (self.comclip or ComclipOptions()).check()

    def query_modality(self, index=None) -> Optional[str]:
        """What the query is, for the recorded floors: 'text', 'image' (files, bytes, items), else None
        (``index`` tells whether a plain str example is one of its keys)."""
        if self.kind == "examples":
            kinds = {_modality(e, index) for e in self.positive} | ({"text"} if self.text is not None else set()) \
                | ({"image"} if self.image is not None or self.item_id is not None else set())
            return kinds.pop() if len(kinds) == 1 and None not in kinds else None
        if self.text is not None:
            return "text"
        if self.image is not None or self.item_id is not None:
            return "image"
        return None


def _modality(example, index=None) -> Optional[str]:
    kind, value = example_kind(example)
    if kind == "text":
        return "text"
    if kind in ("key", "id", "image", "image_base64"):
        return "image"
    if kind == "str":  # as ``Index.examples`` reads it: a key, else an image file, else a text
        if index is not None and len(find_keys(index.folder, index.manifest, [value]).ids):
            return "image"
        return "image" if os.path.isfile(value) else "text"
    return None


def floor(index, spec: QuerySpec) -> Optional[float]:
    """The min_score to apply: the number given, the recorded floor for 'auto', or None."""
    if spec.min_score is None or spec.min_score != AUTO:
        return spec.min_score
    kind = spec.query_modality(index)
    if kind is None:
        raise ValueError("min_score 'auto' is recorded for text and image queries; pass a number for this one")
    if spec.kind == "keyword":
        raise ValueError("min_score 'auto' is a floor on a rerank method's score; pass a BM25 score for keywords")
    biases = index.snapshot.biases
    lam = biases.lam(spec.target) if spec.lam is None else spec.lam
    return biases.floor(kind, spec.target, spec.rerank, lam, spec.alpha)


def search_options(spec: QuerySpec) -> dict:
    """The keyword arguments of ``Index.search`` that ``spec`` sets (what the HTTP batcher groups by)."""
    return dict(target=spec.target, rerank=spec.rerank, candidates=spec.candidates, lam=spec.lam, alpha=spec.alpha,
                tau=spec.tau, where=spec.where, dedup=spec.dedup, captioned=spec.captioned,
                **({"fusion": spec.fusion, "keyword_weight": spec.keyword_weight} if spec.hybrid else {}))


def keywords_of(spec: QuerySpec, n: int) -> Optional[list]:
    """One keyword query per query row when ``spec`` is hybrid."""
    if not spec.hybrid:
        return None
    words = spec.text_match if spec.text_match is not None else spec.text
    return [words] * n if isinstance(words, str) else list(words)


def run(index, spec: QuerySpec) -> tuple[np.ndarray, np.ndarray]:
    """(scores, global ids) of ``spec`` on ``index`` (one row per query text, image or embedding)."""
    spec.check()
    low = floor(index, spec)
    if spec.kind == "keyword":
        s, ids = index.keyword_search(spec.text_match, spec.k, where=spec.where, target=spec.target,
                                      captioned=spec.captioned)
        return above(s, ids, low)
    if spec.rerank == COMCLIP:
        return above(*comclip_search(index, spec), low)
    opts = search_options(spec)
    if spec.kind == "examples":
        pos = list(spec.positive)
        if spec.text is not None:
            pos += [{"text": t} for t in ([spec.text] if isinstance(spec.text, str) else spec.text)]
        if spec.image is not None:
            pos += [{"image": i} for i in (spec.image if isinstance(spec.image, list) else [spec.image])]
        if spec.embedding is not None:
            pos += [{"embedding": e} for e in np.atleast_2d(spec.embedding)]
        if spec.item_id is not None:
            pos.append({"id": spec.item_id})
        ex = index.examples(pos, spec.negative, spec.strategy)
        return index.search(ex.query(), spec.k, examples=ex, min_score=low, text_match=keywords_of(spec, 1), **opts)
    if spec.item_id is not None:
        if not index.is_live([spec.item_id])[0]:
            raise LookupError(f"no item {spec.item_id} in this index (or it was deleted)")
        q = index.embeddings([spec.item_id], "image")
    else:
        q = query_vectors(index.clip, spec.text, spec.image, spec.embedding)
    return index.search(q, spec.k, min_score=low, text_match=keywords_of(spec, len(q)), **opts)


def comclip_search(index, spec: QuerySpec) -> tuple[np.ndarray, np.ndarray]:
    """CLIP's top ``candidates`` (10) of each text under ``where``/``dedup``, reranked by ComCLIP."""
    reranker = ComclipReranker(index, spec.comclip or ComclipOptions())
    texts = [spec.text] if isinstance(spec.text, str) else list(spec.text)
    q = query_vectors(index.clip, texts)
    opts = {**search_options(spec), "rerank": "clip", "candidates": None}
    s, ids = index.search(q, max(spec.k, spec.candidates or CANDIDATES), **opts)
    return reranker.rerank(texts, q, s, ids, spec.k)


def rows(index, spec: QuerySpec, scores: np.ndarray, ids: np.ndarray) -> list[list[dict]]:
    """Result rows (metadata, score, embedding when asked) of each query row."""
    out = []
    for sc, row_ids in zip(scores, ids):
        keep = row_ids >= 0
        meta = index.metadata(row_ids[keep])
        embs = index.embeddings(row_ids[keep], spec.target) if spec.return_embeddings else None
        out.append([{**r, "score": float(s), **({"embedding": embs[i]} if embs is not None else {})}
                    for i, (r, s) in enumerate(zip(meta, sc[keep]))])
    return out


def with_options(spec: QuerySpec, **kw) -> QuerySpec:
    """A copy of ``spec`` with ``kw`` set (unknown names: TypeError)."""
    return replace(spec, **kw)
