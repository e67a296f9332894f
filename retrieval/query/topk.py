"""Merging per-shard top-k lists into one (pure numpy)."""
from __future__ import annotations

import numpy as np

from ..methods.rerank import top_k


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, local ids) into global top-k (ids -1 stay -1)."""
    if len(parts) == 1 and parts[0][0].shape[1] <= k:   # one search (a joined group): as it is, if sorted
        s, ids = parts[0]
        if s.shape[1] < 2 or bool((s[:, :-1] >= s[:, 1:]).all()):
            return s, (ids if offsets[0] == 0 else np.where(ids >= 0, ids + offsets[0], -1))
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] if off == 0 else np.where(p[1] >= 0, p[1] + off, -1) for p, off in zip(parts, offsets)],
                         axis=1)
    top, order = top_k(scores, k)   # best first; equal scores in part order
    return top, np.take_along_axis(ids, order, 1)


def above(scores: np.ndarray, ids: np.ndarray, floor=None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with the results scoring below ``floor`` dropped (ids -1, scores -inf); as is
    when ``floor`` is None. Results are best first, so what is dropped is each row's tail."""
    if floor is None:
        return scores, ids
    low = scores < floor
    return np.where(low, -np.inf, scores).astype(scores.dtype), np.where(low, -1, ids)
