"""Merging per-shard top-k lists into one (pure numpy)."""
from __future__ import annotations

import numpy as np


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, local ids) into global top-k (ids -1 stay -1)."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] if off == 0 else np.where(p[1] >= 0, p[1] + off, -1) for p, off in zip(parts, offsets)],
                         axis=1)
    kk = min(k, scores.shape[1])
    if len(scores) == 1:   # one query (the serving path): 1-D sorts, a third of the time
        order = np.argsort(-scores[0], kind="stable")[:kk]
        return scores[:, order], ids[:, order]
    if kk < scores.shape[1]:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        sub = np.take_along_axis(scores, part, 1)
        order = np.take_along_axis(part, np.argsort(-sub, axis=1, kind="stable"), 1)
    else:
        order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def above(scores: np.ndarray, ids: np.ndarray, floor=None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with the results scoring below ``floor`` dropped (ids -1, scores -inf); as is
    when ``floor`` is None. Results are best first, so what is dropped is each row's tail."""
    if floor is None:
        return scores, ids
    low = scores < floor
    return np.where(low, -np.inf, scores).astype(scores.dtype), np.where(low, -1, ids)
