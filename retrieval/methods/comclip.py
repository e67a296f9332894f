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
