"""Synthetic data shared by the benchmarks: seeded unit vectors (isotropic or clustered) and recall."""
from __future__ import annotations

import numpy as np


def unit_vectors(n: int, d: int, seed: int, clusters: int = 0, spread: float = 1.0,
                 dtype=np.float32) -> np.ndarray:
    """n unit vectors: isotropic (clusters=0) or around ``clusters`` seeded centres (noise ``spread``),
    generated in blocks of 100k (1M x 512 fp16 never holds 2 GB of fp32)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype)
    centres = np.random.default_rng(12345).standard_normal((clusters, d)).astype(np.float32) if clusters else None
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        x = rng.standard_normal((m, d)).astype(np.float32)
        if clusters:
            x = centres[rng.integers(0, clusters, m)] + spread * x
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(got: np.ndarray, want: np.ndarray) -> float:
    """Mean overlap of each row of ``got`` with the same row of ``want`` (recall@k, k = want's width)."""
    return float(np.mean([len(set(a) & set(b)) / want.shape[1] for a, b in zip(got.tolist(), want.tolist())]))
