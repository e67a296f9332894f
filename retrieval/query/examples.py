"""Example queries ("more like these, not like those"): positive and negative examples, each a vector,
combined by one of Qdrant's three recommendation strategies.

- ``average_vector``: one query vector, 2·mean(positives) − mean(negatives) (mean(positives) without
  negatives), normalised, then searched like any query: exact over the whole corpus through the same
  index, and every rerank method (BSAP, BSAP-H, NNN, candidates) applies to it.
- ``sum_scores``: each row's score is Σ cos(row, positive) − Σ cos(row, negative). That is the dot
  product of the row with Σ positives − Σ negatives, so it too is one exact search (the direction
  searched, its length put back into the scores). Plain cosine only: a rerank's offsets have no
  meaning on a sum of similarities.
- ``best_score``: each row's score is s(max cos to a positive) when that beats its max cos to a
  negative, else −s(max cos to a negative), s(x) = (x / (1 + |x|) + 1) / 2 (Qdrant's scaled fast
  sigmoid): rows nearer a positive than any negative first, the others after, ranked away from the
  negatives. Not linear, so a candidate pool is rescored: the top ``max(4k, 100)`` of each positive
  example (from the same selection), exactly, with the stored vectors. Plain cosine only.

Examples that are rows of the index (an id or a key) never come back as results. Numpy in, numpy
out: ``combine`` and ``best_score`` are pure; :class:`ExampleSearch` is the method the searcher runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("average_vector", "best_score", "sum_scores")


class ExampleNotFound(LookupError, ValueError):
    """An example names a row (key or id) the index does not have (HTTP 404, CLI exit 2)."""
POOL = 100


def combine(strategy: str, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The one query vector of ``average_vector`` (unit) or ``sum_scores`` (its length kept)."""
    pos, neg = np.atleast_2d(pos).astype(np.float32), np.asarray(neg, np.float32).reshape(-1, pos.shape[1])
    if strategy == "average_vector":
        q = pos.mean(0) if not len(neg) else 2 * pos.mean(0) - neg.mean(0)
        n = np.linalg.norm(q)
        if not n > 0:
            raise ValueError("the examples cancel out: their combined vector is zero")
        return q / n
    if strategy == "sum_scores":
        return pos.sum(0) - (neg.sum(0) if len(neg) else 0)
    raise ValueError(f"strategy {strategy!r} has no single query vector")


def scaled_sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (x / (1 + np.abs(x)) + 1)


def best_score(vectors: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Qdrant's best_score of rows [n, d] against positives [p, d] and negatives [m, d]."""
    best_pos = (vectors @ pos.T).max(1)
    if not len(neg):
        return scaled_sigmoid(best_pos)
    best_neg = (vectors @ neg.T).max(1)
    return np.where(best_pos > best_neg, scaled_sigmoid(best_pos), -scaled_sigmoid(best_neg))


@dataclass(frozen=True, eq=False)
class Examples:
    """Resolved examples: unit vectors [p, d] and [m, d], and the global ids among them (excluded)."""

    strategy: str
    pos: np.ndarray
    neg: np.ndarray
    ids: tuple = ()

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not len(self.pos):
            raise ValueError("give at least one positive example")

    def query(self) -> np.ndarray:
        """A [1, d] unit vector standing for the examples (what the searcher checks the shape of)."""
        v = self.pos.mean(0)
        n = np.linalg.norm(v)
        return (v / n if n > 0 else self.pos[0])[None].astype(np.float32)

    def method(self, inner, rerank: str, candidates) -> "ExampleSearch":
        check_strategy(self.strategy, rerank, candidates)
        return ExampleSearch(self.strategy, self.pos, self.neg, inner)


EXAMPLE_KINDS = ("key", "id", "text", "image", "image_base64", "embedding")


def example_kind(e) -> tuple[str, object]:
    """(kind, value) of one example: a dict naming its kind (``{"key": ...}``, ``{"id": 7}``,
    ``{"text": ...}``, ``{"image": path or bytes}``, ``{"image_base64": ...}``, ``{"embedding": [...]}``),
    or by type: an int is an id, an array or a list of numbers a vector, bytes an image, a Path an
    image file, and a str ``"str"`` (the index decides: a key it holds, else an image file, else text)."""
    import os

    if isinstance(e, dict):
        given = [k for k in EXAMPLE_KINDS if e.get(k) is not None]
        if len(given) != 1 or set(e) - set(EXAMPLE_KINDS):
            raise ValueError(f"an example names exactly one of {', '.join(EXAMPLE_KINDS)}, got {sorted(e)}")
        return given[0], e[given[0]]
    if isinstance(e, bool):
        raise ValueError("an example cannot be a bool")
    if isinstance(e, (int, np.integer)):
        return "id", int(e)
    if isinstance(e, (bytes, bytearray)):
        return "image", bytes(e)
    if isinstance(e, os.PathLike):
        return "image", e
    if isinstance(e, str):
        return "str", e
    if isinstance(e, (np.ndarray, list, tuple)):
        return "embedding", e
    raise ValueError(f"an example is a key, id, text, image or embedding, not a {type(e).__name__}")


def check_strategy(strategy: str, rerank: str, candidates) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "average_vector" and (rerank != "clip" or candidates is not None):
        raise ValueError(f"strategy {strategy!r} scores rows by their similarities to the examples: it takes no "
                         f"rerank (use average_vector with --rerank {rerank})")


@dataclass(frozen=True, eq=False)
class ExampleSearch:
    """The method of an example query: ``inner`` (any rerank method) for ``average_vector``, plain
    scores for ``sum_scores`` and ``best_score``. The query rows the searcher passes are ignored
    (one recommendation per call)."""

    strategy: str
    pos: np.ndarray
    neg: np.ndarray
    inner: object = None

    def search(self, engine, q: np.ndarray, k: int, selection=None):
        if self.strategy == "average_vector":
            return self.inner.search(engine, combine("average_vector", self.pos, self.neg)[None], k, selection)
        if self.strategy == "sum_scores":
            v = combine("sum_scores", self.pos, self.neg)
            n = float(np.linalg.norm(v))
            if not n > 0:
                raise ValueError("the examples cancel out: their summed vector is zero")
            s, ids = engine.search((v / n)[None], k, selection=selection)
            return np.where(ids >= 0, s * n, -np.inf).astype(np.float32), ids
        pool = max(4 * k, POOL)
        ids = np.unique(engine.search(self.pos, pool, selection=selection)[1])  # every positive in one search
        ids = ids[ids >= 0]
        out_s, out_i = np.full((1, k), -np.inf, np.float32), np.full((1, k), -1, np.int64)
        if len(ids):
            scores = best_score(engine.shards.gather(ids, engine.modality), self.pos, self.neg)
            order = np.lexsort((ids, -scores))[:k]
            out_s[0, :len(order)], out_i[0, :len(order)] = scores[order], ids[order]
        return out_s, out_i
