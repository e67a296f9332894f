"""The index-key rule (autofaiss's, DESIGN §3) as pure functions of (N, d, memory budget).

``choose_index_key`` picks the faiss factory string for an index of N vectors; the budget is for the
whole index (every shard together: the key is chosen once from the folder's rows, ``shard_key``).
``train_size`` and ``sample_ids`` say what to train on. Nothing here imports faiss;
:mod:`retrieval.store.faiss_index` does the work.

What the budget covers (``index_memory``): what faiss holds in RAM (codes, ids, coarse centroids,
codebooks, HNSW links) and, for compressed keys, the 8 bytes per row of BSAP/NNN offsets the exact
re-score reads. Not covered: the fp16 vectors a compressed index re-scores from, which are memory-
mapped (page cache, read per candidate, reclaimable), and the metadata.

Compressed keys are ``IVF{nlist},PQ{M}`` with 8-bit codes over the combined vectors
(``store.combined``): the item's d dimensions in M - 1 sub-vectors of d / (M - 1), and the two
offsets coordinates (zero-padded) in a sub-vector of their own, so BSAP/NNN candidates come from
codes of the method's own score and a bias recomputation rewrites that one sub-code in place.
Candidates are re-scored exactly from the fp16 vectors at query time (``query.rescore``).
"""
from __future__ import annotations

import math
import re
from typing import Optional

import numpy as np

FLAT_MAX = 10_000
IVF_FLAT_MAX = 1_000_000
HNSW_MIN_M, HNSW_MAX_M = 8, 32
TRAIN_PER_CENTROID, MIN_PER_CENTROID = 100, 39
MIN_SUB_DIM = 2      # dimensions per PQ sub-vector, at least
OFFSET_BYTES = 8     # BSAP + NNN offsets (float32) per row, held for the exact re-score
POOL_FACTOR = 40     # candidates per result a compressed index gives for the exact re-score
POOL_MIN = 400       # at least this many (BSAP's top k sits among many near-ties: measured)
ASSIGN_MAX = 2 ** 36  # N x nlist at most: a build assigns every vector to its nearest list with a
                      # flat coarse search, N x nlist x d multiply-adds (k-means on 100 x nlist
                      # vectors costs as much again per 10 iterations): 2^36 x 528 is ~8 min of 2 CPU
                      # cores at ~150 GFLOP/s, what a 10M build can afford (4,096 lists instead of 16,384);
                      # never fewer lists than ~sqrt(N) (50M: 8,192), where queries would scan too much


def ivf_centroids(n: int, max_assign: Optional[int] = ASSIGN_MAX) -> int:
    """Power of two nearest 4*sqrt(N), halved while N x it exceeds ``max_assign`` (None: never) but not
    below the power of two nearest sqrt(N); at most N / MIN_PER_CENTROID, and >= 1."""
    k = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    floor = 2 ** round(math.log2(max(math.sqrt(n), 1)))
    while max_assign is not None and k > floor and k * n > max_assign:
        k //= 2
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
    pq = re.fullmatch(r"IVF(\d+),PQ(\d+)(?:x8)?", key)
    k, m = (int(pq.group(1)), int(pq.group(2))) if pq else (0, 0)
    if m > 1 and d % (m - 1) == 0:   # the compressed layout: the offsets in a sub-vector of their own
        dim = d // (m - 1) * m
        return n * (m + 8 + OFFSET_BYTES) + 4 * k * dim + 4 * 256 * dim
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
    k = ivf_centroids(n)
    for m in sorted((m for m in range(1, d // MIN_SUB_DIM + 1) if d % m == 0), reverse=True):
        key = f"IVF{k},PQ{m + 1}"
        if index_memory(key, n, d) <= memory_budget:
            return key
    raise ValueError(f"memory budget {memory_budget} bytes is too small for {n} vectors of dim {d}")


def compressed(key: str) -> bool:
    """Whether ``key`` stores lossy codes, whose search results are re-scored from the fp16 vectors."""
    return "PQ" in key or "SQ8" in key or "SQ4" in key or "SQ6" in key


def pool_size(k: int, factor: int = POOL_FACTOR) -> int:
    """Candidates a compressed index gives for a top-``k`` that is re-scored exactly."""
    return max(int(k) * factor, POOL_MIN) if k > 0 else 0


def ivf_lists(key: str) -> int:
    """Number of IVF lists named in a factory string (0 when it has no IVF part)."""
    if "IVF" not in key:
        return 0
    return int(key.split("IVF")[1].split("_")[0].split(",")[0])


def shard_key(n: int, d: int, memory_budget: int, forced: Optional[str] = None, total: Optional[int] = None) -> str:
    """The key for one shard of ``n`` rows: ``forced``, else the rule's for the ``total`` rows of the
    whole index (default ``n``), unless the shard is too small to train it: then the rule's for the
    shard alone (a small Flat shard, merged by ``compact``)."""
    key = forced or choose_index_key(max(n, total or 0), d, memory_budget)
    if n >= max(ivf_lists(key), 256 if "PQ" in key else 0):
        return key
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
