"""BSAP-H's λ chosen from an index's own image–caption pairs (docs/quality.md).

BSAP-H ranks targets by h_j = s(q, j) − (1 − λ) c_j. Which λ is best depends on the corpus and the
direction (on real CLIP embeddings, bank temperature τ/2: ImageNet text→image chooses λ = 0,
image→text λ = 0.6; the fashion pairs λ = 0–0.1). An index of captioned images carries its own relevance
judgements: each caption describes its image. So λ is chosen by retrieval over the whole corpus with
a sample of the pairs as queries, on a grid: the λ with the most pairs found at rank 1 (ties: the
larger λ, closer to plain CLIP). A hit is a top target that *is* the query's pair, or whose pair
matches it in either modality (a duplicate image, or the same caption: ImageNet's class prompts
caption many images).

Numpy in, numpy out: ``TopByLam`` folds blocks of targets into running top-1 rows per λ;
``block_top1`` finds a block's top-1 for every λ by bisecting the grid; ``pair_hits`` judges them;
``choose_lam`` picks.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from ..store import bf16

LAM_GRID = tuple(round(0.1 * i, 1) for i in range(11))   # λ = 1 is CLIP, λ = 0 ranks like BSAP
MIN_PAIRS = 50      # fewer captioned pairs than this: the defaults (LAM_BY_TARGET) stay
SAME = 0.999        # cosine at which two stored embeddings are the same item (fp16 storage)
FEW = 16            # at most 1/FEW of a block's scores may raise a top-1: folded on their own


class TopByLam:
    """Running top-1 global row per λ of queries [nq, d] over blocks of targets with their offsets."""

    def __init__(self, queries: np.ndarray, grid: tuple[float, ...] = LAM_GRID):
        q = np.asarray(queries, np.float32)
        if q.ndim != 2:
            raise ValueError(f"queries must be 2-D, got shape {q.shape}")
        self.q, self.grid = q, np.asarray(grid, np.float32)
        self.best = np.full((len(grid), len(q)), -np.inf, np.float32)
        self.rows = np.full((len(grid), len(q)), -1, np.int64)

    def add(self, targets: np.ndarray, offsets: np.ndarray, rows: np.ndarray, block: int = 2048) -> None:
        """Fold targets [n, d] with offsets [n] and global rows [n] into the running top-1: one matmul
        per block of targets, then only the scores that may raise a row's top-1 at some λ (``_low``).
        Once a few blocks are folded those are a few per row (~7 of 2,048 on clustered data), folded
        on their own (``_fold_few``); while they are many, the λ grid is folded over whole rows
        (``block_top1``) by up to ``os.cpu_count()`` threads, each on its own rows of queries with its
        own score buffer (numpy releases the GIL). The same top-1 either way."""
        targets = np.asarray(targets)
        if targets.dtype not in (np.float16, np.float32):
            targets = targets.astype(np.float32)
        if len(targets) != len(offsets) or len(targets) != len(rows):
            raise ValueError(f"{len(targets)} targets, {len(offsets)} offsets, {len(rows)} rows")
        offsets, rows = np.asarray(offsets, np.float32), np.asarray(rows, np.int64)
        width = min(block, len(targets))
        threads = min(os.cpu_count() or 1, 4, max(1, len(self.q) // 64))
        bufs = [np.empty((-(-len(self.q) // threads), width), np.float32) for _ in range(threads)]
        product = (_TorchProduct if bf16.torch_fp32_faster() else _NumpyProduct)(self.q, targets, width)
        with ThreadPoolExecutor(threads) as pool:
            for i in range(0, len(targets), block):
                s = product(i, block)      # [nq, b]
                o, r = offsets[i:i + block], rows[i:i + block]
                may = s > self._low(o)[:, None]
                if np.count_nonzero(may) <= s.size // FEW:
                    self._fold_few(s, o, r, *np.divmod(np.flatnonzero(may), s.shape[1]))   # 10x np.nonzero's speed
                    continue
                active = np.flatnonzero(may.any(1))
                if len(active):
                    parts = np.array_split(active, min(threads, len(active)))
                    list(pool.map(lambda a: self._fold(s, o, r, *a), zip(parts, bufs)))

    def _low(self, offsets: np.ndarray) -> np.ndarray:
        """Per query row, a score at or below which a target of the block raises no λ's top-1:
        h = s - w·c <= s - w·min(c) for every weight w >= 0, so a score at most min over w of (the
        row's top-1 at w + w·min(c)) gains nothing (less a margin above float32 rounding)."""
        floor = (self.best + (1.0 - self.grid)[:, None] * offsets.min()).min(0)
        return floor - 1e-5 * (1.0 + np.abs(floor))

    def _fold_few(self, s: np.ndarray, offsets: np.ndarray, rows: np.ndarray, qi: np.ndarray, tj: np.ndarray) -> None:
        """Fold the block's scores s[qi, tj] (the only ones that may raise a top-1; row-major) into
        the running top-1, every λ: each row's best of them per weight, the first one on ties, as
        ``block_top1`` finds over the whole row (the others score at most the row's top-1 at every
        weight, so they never win)."""
        if not len(qi):
            return
        vals, c = s[qi, tj], offsets[tj]
        starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]])
        q, counts = qi[starts], np.diff(np.r_[starts, len(qi)])
        for g, w in enumerate(np.asarray(1.0 - self.grid, np.float32)):
            h = vals - w * c                                  # as block_top1: s - float32(w·c)
            top = np.maximum.reduceat(h, starts)
            better = top > self.best[g, q]
            if not better.any():
                continue
            hit = np.flatnonzero(h == np.repeat(top, counts))
            first = hit[np.r_[True, qi[hit[1:]] != qi[hit[:-1]]]]   # each row's first position at its best
            self.best[g, q[better]] = top[better]
            self.rows[g, q[better]] = rows[tj[first[better]]]

    def _fold(self, s: np.ndarray, offsets: np.ndarray, rows: np.ndarray, q: np.ndarray, buf: np.ndarray) -> None:
        """Fold one block's scores s [nq, b] into the running top-1 of query rows ``q``, every λ."""
        part = s[q[0]:q[-1] + 1] if q[-1] - q[0] + 1 == len(q) else s[q]   # a view when they run in a row
        win, val = block_top1(part, offsets, 1.0 - self.grid, buf)
        for g in range(len(self.grid)):
            better = val[g] > self.best[g, q]
            self.best[g, q[better]] = val[g][better]
            self.rows[g, q[better]] = rows[win[g][better]]


class _NumpyProduct:
    """q · targets[i:i + b]ᵀ by numpy's matmul into one reused buffer (a fresh score array per block
    ran the matmul at ~60 % speed); fp16 rows (a shard's npy) converted a block at a time by numpy's
    loop (torch's kernels between OpenBLAS calls made each matmul wait on torch's threads)."""

    def __init__(self, q: np.ndarray, targets: np.ndarray, width: int):
        self.q, self.targets = q, targets
        self.out = np.empty((len(q), width), np.float32)
        self.rows = np.empty((width, q.shape[1]), np.float32) if targets.dtype != np.float32 else None

    def __call__(self, i: int, block: int) -> np.ndarray:
        t = self.targets[i:i + block]
        if self.rows is not None:
            np.copyto(self.rows[:len(t)], t)
            t = self.rows[:len(t)]
        return np.matmul(self.q, t.T, out=self.out[:, :len(t)])


class _TorchProduct:
    """The same product through torch's matmul under the bf16 mode's kernel, where that computes
    float32 faster than numpy's BLAS (``store.bf16.torch_fp32_faster``); fp16 rows converted by torch.
    No OpenBLAS call runs inside the loop, so nothing waits on torch's threads. A numpy view back."""

    def __init__(self, q: np.ndarray, targets: np.ndarray, width: int):
        import torch

        self.torch = torch
        with warnings.catch_warnings():   # read-only targets (a memory-mapped npy): nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            self.q, self.targets = torch.from_numpy(q), torch.from_numpy(targets)
        self.out = torch.empty(len(q), width)
        self.rows = torch.empty(width, q.shape[1]) if targets.dtype != np.float32 else None

    def __call__(self, i: int, block: int) -> np.ndarray:
        torch = self.torch
        t = self.targets[i:i + block]
        if self.rows is not None:
            t = self.rows[:len(t)].copy_(t)
        with torch.inference_mode(), bf16.matmul_math(torch, "bf16"):
            return torch.matmul(self.q, t.T, out=self.out[:, :len(t)]).numpy()


def block_top1(s: np.ndarray, offsets: np.ndarray, weights: np.ndarray,
               buf: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(argmax_j, max_j) of s[r, j] - w·offsets[j] for every weight w of ``weights`` (sorted) and
    row r: [G, n] each. h_w(j) is linear in w, so a target that wins at two weights wins at every
    weight between them: the weights are bisected and only the rows whose winners differ at an
    interval's ends are scanned inside it (on real and clustered data ~half the rows differ at the
    grid's ends; the scans fall from 11 to ~4 on average). Equal to scanning every weight."""
    n, b = s.shape
    G = len(weights)
    buf = np.empty((n, b), np.float32) if buf is None or buf.shape[0] < n or buf.shape[1] < b else buf
    win, val = np.empty((G, n), np.int64), np.empty((G, n), np.float32)
    wo = np.asarray(weights, np.float32)[:, None] * offsets[None, :]            # [G, b]

    def scan(g: int, idx: Optional[np.ndarray]) -> None:
        part = s if idx is None else s[idx]
        h = np.subtract(part, wo[g][None, :], out=buf[:len(part), :b])
        j = h.argmax(1)
        if idx is None:
            win[g], val[g] = j, h[np.arange(len(j)), j]
        else:
            win[g, idx], val[g, idx] = j, h[np.arange(len(j)), j]

    scan(0, None)
    if G > 1:
        scan(G - 1, None)
    todo = [(0, G - 1, np.arange(n))]
    while todo:
        a, z, idx = todo.pop()
        if z - a < 2 or not len(idx):
            continue
        same = win[a, idx] == win[z, idx]
        keep, j = idx[same], win[a, idx[same]]
        for g in range(a + 1, z):
            win[g, keep] = j
            val[g, keep] = s[keep, j] - wo[g, j]
        rest = idx[~same]
        if len(rest):
            m = (a + z) // 2
            scan(m, rest)
            todo += [(a, m, rest), (m, z, rest)]
    return win, val


def pair_hits(query_rows: np.ndarray, top_rows: np.ndarray, pair_of) -> np.ndarray:
    """[G, nq] whether each λ's top row is the query's pair or matches it: ``pair_of(rows)`` returns
    (image [n, d], caption [n, d] or zeros where none) of global rows."""
    query_rows, top_rows = np.asarray(query_rows, np.int64), np.asarray(top_rows, np.int64)
    uniq, inv = np.unique(top_rows, return_inverse=True)
    qi, qt = pair_of(query_rows)
    ti, tt = pair_of(uniq)
    ti, tt = ti[inv.reshape(top_rows.shape)], tt[inv.reshape(top_rows.shape)]   # [G, nq, d]
    same_img = np.einsum("gqd,qd->gq", ti, qi) >= SAME
    same_cap = np.einsum("gqd,qd->gq", tt, qt) >= SAME
    return (top_rows == query_rows[None]) | same_img | same_cap


def choose_lam(hits: np.ndarray, grid: tuple[float, ...] = LAM_GRID) -> tuple[float, list[float]]:
    """(λ with the most hits, ties to the larger λ; R@1 per λ of the grid)."""
    r1 = np.asarray(hits, np.float64).mean(1)
    best = np.flatnonzero(r1 >= r1.max() - 1e-12)
    return float(grid[int(best.max())]), [round(float(v), 4) for v in r1]


def sample_pairs(n_pairs: int, size: int, seed: int) -> Optional[np.ndarray]:
    """Sorted positions of a seeded sample of ``size`` among ``n_pairs`` pairs; None below MIN_PAIRS."""
    if n_pairs < MIN_PAIRS or size < MIN_PAIRS:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_pairs, min(size, n_pairs), replace=False))
