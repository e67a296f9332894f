"""ComCLIP's score (Jiang et al., NAACL 2024), as its released code computes it: numpy in, numpy out.

For one image and one caption:
- ``g``: the image's global embedding, not normalised;
- the caption's parts (entities and the predicate) ``u_k`` and the image's sub-images ``e_k`` (each
  part's masked image, ``corpus.subimages``), embeddings not normalised;
- ``s_k = u_k · e_k``; weights ``w_k = s_k / Σ_j s_j`` (``"sum"``, the code's) or
  ``softmax(s_k / T)`` (``"softmax"``, the paper's wording);
- the fused image embedding ``v = g + Σ_k w_k e_k`` and the score ``cos(v, t)`` with ``t`` the caption's
  embedding.
Parts without a sub-image (no box matched) use the whole image, as the code does; with no parts at
all the score is CLIP's ``cos(g, t)``.
"""
from __future__ import annotations

import numpy as np

WEIGHTINGS = ("sum", "softmax")


def part_weights(scores: np.ndarray, weighting: str = "sum", temperature: float = 1.0) -> np.ndarray:
    """The weights of the parts' scores ``s_k`` [m]: ``s / Σ s`` or ``softmax(s / temperature)``."""
    s = np.asarray(scores, np.float64)
    if weighting == "sum":
        total = s.sum()
        if total == 0:
            raise ValueError("the parts' scores sum to zero: their weights s_k / sum s_j are undefined")
        return s / total
    if weighting == "softmax":
        if not temperature > 0:
            raise ValueError(f"the softmax temperature must be positive, got {temperature}")
        z = s / temperature
        z = np.exp(z - z.max())
        return z / z.sum()
    raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")


def fuse(g: np.ndarray, sub: np.ndarray, parts: np.ndarray, weighting: str = "sum",
         temperature: float = 1.0) -> np.ndarray:
    """``v = g + Σ_k w_k e_k`` for a global embedding ``g`` [d], sub-image embeddings ``sub`` [m, d] and
    the parts' text embeddings ``parts`` [m, d] (none of them normalised); ``g`` when m = 0."""
    g = np.asarray(g, np.float64)
    sub, parts = np.asarray(sub, np.float64).reshape(-1, g.shape[-1]), np.asarray(parts, np.float64).reshape(-1, g.shape[-1])
    if len(sub) != len(parts):
        raise ValueError(f"{len(sub)} sub-images for {len(parts)} parts")
    if not len(sub):
        return g
    w = part_weights((sub * parts).sum(1), weighting, temperature)
    return g + w @ sub


def comclip_score(g: np.ndarray, sub: np.ndarray, parts: np.ndarray, caption: np.ndarray, weighting: str = "sum",
                  temperature: float = 1.0) -> float:
    """ComCLIP's score of one image (``g``, ``sub``) for one caption (``caption``, ``parts``)."""
    v = fuse(g, sub, parts, weighting, temperature)
    t = np.asarray(caption, np.float64)
    return float(v @ t / (np.linalg.norm(v) * np.linalg.norm(t)))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ground(entities: np.ndarray, boxes: np.ndarray, whole: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """For each entity text embedding [m, d], the index of the box whose masked-image embedding
    [b, d] it matches best (cosine), or -1 when no box beats the whole image's embedding [d] by more
    than ``margin``: the "no region matched" case, where ComCLIP uses the whole image."""
    ent = _unit(np.asarray(entities).reshape(-1, np.shape(whole)[-1]))
    if not len(ent):
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes).reshape(-1, ent.shape[1])
    if not len(boxes):
        return np.full(len(ent), -1, np.int64)
    sims = ent @ _unit(boxes).T
    best = sims.argmax(1)
    beats = sims[np.arange(len(ent)), best] > ent @ _unit(whole) + margin
    return np.where(beats, best, -1).astype(np.int64)
