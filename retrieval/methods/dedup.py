"""Near-duplicate collapse of a ranked result list (clip-retrieval back's rule, DESIGN §9).

Results whose embeddings have cosine >= ``threshold`` are connected; each connected group keeps its
best-ranked member. Repeated ids are duplicates too.
"""
from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.94


def keep_mask(emb: np.ndarray, ids: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Which of the ranked rows ``emb`` [n, d] (L2-normalised, best first) survive: bool [n]."""
    emb = np.asarray(emb, np.float32)
    ids = np.asarray(ids)
    if emb.ndim != 2 or len(emb) != len(ids):
        raise ValueError(f"need embeddings [n, d] for n ids, got {emb.shape} and {ids.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the dedup threshold must be in (0, 1], got {threshold}")
    n = len(ids)
    linked = (emb @ emb.T >= threshold) | (ids[:, None] == ids[None, :])
    group = np.full(n, -1)
    for i in range(n):  # connected components by flood fill; the first (best-ranked) member names the group
        if group[i] >= 0:
            continue
        group[i] = i
        stack = [i]
        while stack:
            j = stack.pop()
            for m in np.flatnonzero(linked[j] & (group < 0)):
                group[m] = i
                stack.append(m)
    return group == np.arange(n)
