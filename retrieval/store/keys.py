"""The index-key rule (autofaiss's, DESIGN §3) as pure functions of (N, d, memory budget).

``choose_index_key`` picks the faiss factory string of one shard; ``train_size`` and ``sample_ids``
say what to train on. Nothing here imports faiss; :mod:`retrieval.store.faiss_index` does the work.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

FLAT_MAX = 10_000
IVF_FLAT_MAX = 1_000_000
HNSW_MIN_M, HNSW_MAX_M = 8, 32
TRAIN_PER_CENTROID, MIN_PER_CENTROID = 100, 39


def ivf_centroids(n: int) -> int:
    """Power of two nearest 4*sqrt(N), at most N / MIN_PER_CENTROID (and >= 1)."""
    k = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    while k > 1 and k * MIN_PER_CENTROID > n:
        k //= 2
    return k


def pq_centroids(n: int) -> int:
    """IVF lists for the compressed index: 2^14 / 2^16 for 1M-10M, 2^16-2^18 for 10M-300M."""
    if n < 4_000_000:
        k = 2 ** 14
    elif n < 30_000_000:
        k = 2 ** 16
    elif n < 100_000_000:
        k = 2 ** 17
    else:
        k = 2 ** 18
    while k > 1 and k * MIN_PER_CENTROID > n:
        k //= 2
    return k


def index_memory(key: str, n: int, d: int) -> int:
    """Approximate bytes of an index built from ``key`` holding ``n`` vectors of dim ``d``."""
    if key == "Flat":
        return 4 * n * d
    if key.startswith("HNSW"):
        m = int(key[4:].split(",")[0])
        return n * (4 * d + 8 * m)
    if key.startswith("IVF") and key.endswith(",Flat"):
        k = int(key[3:].split(",")[0])
        return n * (4 * d + 8) + 4 * k * d
    if key.startswith("OPQ"):
        m = int(key.split("_")[0][3:])
        k = int(key.split(",IVF")[1].split("_")[0])
        return n * (m + 8) + 4 * k * d + 4 * d * d + k * 32 * 8 * 2
    raise ValueError(f"no memory model for index key {key!r}")


def choose_index_key(n: int, d: int, memory_budget: int) -> str:
    """The faiss factory string for N vectors of dim d within ``memory_budget`` bytes."""
    if n <= 0 or d <= 0:
        raise ValueError(f"need n > 0 and d > 0, got n={n}, d={d}")
    if n < FLAT_MAX:
        return "Flat"
    m = int((memory_budget / (4 * n) - d) // 2)
    if m >= HNSW_MIN_M:
        return f"HNSW{min(m, HNSW_MAX_M)},Flat"
    if n < IVF_FLAT_MAX:
        key = f"IVF{ivf_centroids(n)},Flat"
        if index_memory(key, n, d) <= memory_budget:
            return key
    k = pq_centroids(n)
    for m in sorted((m for m in range(1, d) if d % m == 0), reverse=True):
        key = f"OPQ{m}_{d},IVF{k}_HNSW32,PQ{m}x8"
        if index_memory(key, n, d) <= memory_budget:
            return key
    raise ValueError(f"memory budget {memory_budget} bytes is too small for {n} vectors of dim {d}")


def ivf_lists(key: str) -> int:
    """Number of IVF lists named in a factory string (0 when it has no IVF part)."""
    if "IVF" not in key:
        return 0
    return int(key.split("IVF")[1].split("_")[0].split(",")[0])


def shard_key(n: int, d: int, memory_budget: int, forced: Optional[str] = None) -> str:
    """The key for one shard: ``forced`` unless the shard is too small to train it, else the rule's."""
    if forced and n >= max(ivf_lists(forced), 256 if "PQ" in forced else 0):
        return forced
    return choose_index_key(n, d, memory_budget)


def train_size(key: str, n: int) -> int:
    """Training vectors to sample: ~100 per IVF list (all of them below that)."""
    k = ivf_lists(key)
    if k == 0:
        return 0
    return min(n, max(TRAIN_PER_CENTROID * k, 256 * 39 if "PQ" in key else 0))


def training_rows(pool: np.ndarray, key: str, seed: int = 0) -> np.ndarray:
    """The rows of ``pool`` an index of ``key`` trains on (``train_size`` of them, ``sample_ids``)."""
    return pool[sample_ids(len(pool), train_size(key, len(pool)), seed)]


def sample_ids(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted random row ids to train on (never the first rows: shards are often ordered)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
