"""Retrieval-time reranking (DESIGN §4) as functions over numpy arrays; no model or index needed.

Shapes: queries ``q`` [nq, d]; candidates ``cand`` [n, d] (shared by all queries) or [nq, n, d]
(one candidate list per query); bank [m, d]. Every embedding is L2-normalised; ``tau`` is the
model's logit scale (read it from the model: 100 for OpenAI CLIP, about 15 for the tiny fixture).

- ``clip``: s(q, j).
- ``bsap``: b_j = exp(τ s(j,q)) / (exp(τ s(j,q)) + Σ_m exp(τ s(j,a_m))), auxiliary-prompt bank a.
- ``hybrid`` (BSAP-H): h_j = s(q,j) − (1−λ) c_j, the log-space interpolation between CLIP (λ = 1)
  and BSAP's ranking s − c_j (λ = 0): τ h_j = λ τ s + (1−λ) τ (s − c_j), the log of a geometric mix of
  the CLIP and BSAP softmaxes, so both terms are on one scale whatever the number of candidates.
  (The earlier form, λ softmax(τ s) + (1−λ) b_j / Σ b_k, let the peaked softmax win unless the
  candidate set was small: docs/quality.md.) An index chooses λ per target from its own pairs
  (``methods.calibrate``); ``LAM_BY_TARGET`` (0.1 for images, 0.2 for captions, measured on real CLIP
  embeddings) is the default where it cannot.
- ``nnn``: s(q,j) - α bias(j), bias(j) = mean of the k largest s(r,j) over a reference bank r.

With a fixed bank, BSAP ranks like s(j,q) - c_j with c_j = LSE_m(τ s(j,a_m)) / τ, BSAP-H is
s(j,q) - (1-λ) c_j, and NNN is s(j,q) - α bias(j): each is a per-item offset, so the whole corpus can
be searched exactly (``offset_search``) instead of reranking CLIP's top candidates only.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

METHODS = ("clip", "bsap", "hybrid", "nnn")
# BSAP-H: weight of CLIP in the log-space interpolation, by target (docs/quality.md): image targets
# keep BSAP's gain (λ = 0.1), text targets CLIP's accuracy where BSAP hurts zero-shot (λ = 0.2)
LAM_BY_TARGET = {"image": 0.1, "text": 0.2}
DEFAULT_LAM = LAM_BY_TARGET["image"]
DEFAULT_NNN_K = 16    # NNN: reference similarities averaged; 128 lost 3 points to CLIP on 99 items (docs/quality.md)


def _f32(x: np.ndarray, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dims, got shape {x.shape}")
    return x


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def clip_scores(q: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine scores [nq, n]."""
    q = _f32(q, "queries", (2,))
    cand = _f32(cand, "candidates", (2, 3))
    if cand.shape[-1] != q.shape[1]:
        raise ValueError(f"candidates have dim {cand.shape[-1]}, queries {q.shape[1]}")
    if cand.ndim == 2:
        return q @ cand.T
    if cand.shape[0] != q.shape[0]:
        raise ValueError(f"per-query candidates need {q.shape[0]} lists, got {cand.shape[0]}")
    return np.einsum("qd,qnd->qn", q, cand)


CHUNK_ELEMENTS = 1 << 22  # items x bank scores computed at once (16 MB of float32 per temporary)


def _chunk(bank_rows: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(bank_rows, 1))


def bsap_offsets(items: np.ndarray, bank: np.ndarray, tau: float, chunk: Optional[int] = None) -> np.ndarray:
    """c_j = LSE_m(τ s(j, a_m)) / τ for every item [n] (computed in chunks of items, a bounded
    number of scores at a time whatever the bank size)."""
    items = _f32(items, "items", (2,))
    bank = _f32(bank, "bank", (2,))
    if len(bank) == 0:
        raise ValueError("the auxiliary-prompt bank is empty")
    chunk = chunk or _chunk(len(bank))
    out = np.empty(len(items), np.float32)
    for i in range(0, len(items), chunk):
        out[i:i + chunk] = _logsumexp(tau * (items[i:i + chunk] @ bank.T), axis=1) / tau
    return out


def bsap_from_offsets(scores: np.ndarray, offsets: np.ndarray, tau: float) -> np.ndarray:
    """b_j from cosine scores [nq, n] and offsets c_j ([n] or [nq, n]): sigmoid(τ (s - c))."""
    z = tau * (np.asarray(scores, np.float32) - np.asarray(offsets, np.float32))
    return np.exp(-np.logaddexp(0.0, -z)).astype(np.float32)


def bsap_scores(q: np.ndarray, cand: np.ndarray, bank: np.ndarray, tau: float) -> np.ndarray:
    """Balanced similarity b_j in (0, 1) [nq, n]."""
    s = clip_scores(q, cand)
    cand = np.asarray(cand, np.float32)
    if cand.ndim == 2:
        off = bsap_offsets(cand, bank, tau)
    else:
        off = bsap_offsets(cand.reshape(-1, cand.shape[-1]), bank, tau).reshape(cand.shape[:2])
    return bsap_from_offsets(s, off, tau)


def hybrid_from_offsets(scores: np.ndarray, offsets: np.ndarray, lam: float = DEFAULT_LAM) -> np.ndarray:
    """h_j = s − (1−λ) c_j from cosine scores [nq, n] and BSAP offsets c_j ([n] or [nq, n])."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return (np.asarray(scores, np.float32) - (1.0 - lam) * np.asarray(offsets, np.float32)).astype(np.float32)


def hybrid_scores(q: np.ndarray, cand: np.ndarray, bank: np.ndarray, tau: float, lam: float = DEFAULT_LAM) -> np.ndarray:
    """BSAP-H scores [nq, n]: s − (1−λ) c_j."""
    cand = np.asarray(cand, np.float32)
    if cand.ndim == 2:
        off = bsap_offsets(cand, bank, tau)
    else:
        off = bsap_offsets(cand.reshape(-1, cand.shape[-1]), bank, tau).reshape(cand.shape[:2])
    return hybrid_from_offsets(clip_scores(q, cand), off, lam)


def nnn_bias(items: np.ndarray, reference: np.ndarray, k: int = DEFAULT_NNN_K, chunk: Optional[int] = None) -> np.ndarray:
    """bias(j) = mean of the k largest s(r, j) over the reference queries r [n]."""
    items = _f32(items, "items", (2,))
    reference = _f32(reference, "reference", (2,))
    if len(reference) == 0 or k <= 0:
        raise ValueError("NNN needs a non-empty reference bank and k > 0")
    k = min(k, len(reference))
    chunk = chunk or _chunk(len(reference))
    out = np.empty(len(items), np.float32)
    for i in range(0, len(items), chunk):
        s = items[i:i + chunk] @ reference.T
        out[i:i + chunk] = np.partition(s, s.shape[1] - k, axis=1)[:, -k:].mean(axis=1)
    return out


def nnn_scores(q: np.ndarray, cand: np.ndarray, bias: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """s(q, j) - α bias(j) [nq, n]; ``bias`` matches the candidates ([n] or [nq, n])."""
    return clip_scores(q, cand) - alpha * np.asarray(bias, np.float32)


def rerank_scores(method: str, q: np.ndarray, cand: np.ndarray, *, tau: float = 100.0,
                  bank: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                  lam: float = DEFAULT_LAM, alpha: float = 0.75) -> np.ndarray:
    """Scores of ``method`` for the candidates (higher is better)."""
    if method not in METHODS:
        raise ValueError(f"unknown rerank method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "clip":
        return clip_scores(q, cand)
    if method in ("bsap", "hybrid"):
        if bank is None:
            raise ValueError(f"{method} needs an auxiliary-prompt bank")
        return bsap_scores(q, cand, bank, tau) if method == "bsap" else hybrid_scores(q, cand, bank, tau, lam)
    if bias is None:
        raise ValueError("nnn needs per-candidate biases (see nnn_bias)")
    return nnn_scores(q, cand, bias, alpha)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, column ids) of the k best per row, best first (ties: lower id first)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    if len(scores) == 1:   # one query (the serving path): the same selection in 1-D, without the 2-D gathers
        row = scores[0]
        part = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        ids = part[np.lexsort((part, -row[part]))]
        return row[ids][None], ids[None]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    sub = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -sub), axis=1)
    ids = np.take_along_axis(part, order, 1)
    return np.take_along_axis(scores, ids, 1), ids


def offset_search(q: np.ndarray, items: np.ndarray, offsets: np.ndarray, k: int,
                  chunk: int = 262144) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of s(q, j) - c_j over all items (the whole-corpus form of BSAP and NNN)."""
    q = _f32(q, "queries", (2,))
    if len(offsets) != len(items):
        raise ValueError(f"{len(offsets)} offsets for {len(items)} items")
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for i in range(0, len(items), chunk):
        s = q @ np.asarray(items[i:i + chunk], np.float32).T - np.asarray(offsets[i:i + chunk], np.float32)
        cs, ci = top_k(s, k)
        best_s, pos = top_k(np.concatenate([best_s, cs], 1), k)
        best_i = np.take_along_axis(np.concatenate([best_i, ci + i], 1), pos, 1)
    return best_s, best_i
