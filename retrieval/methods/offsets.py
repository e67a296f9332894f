"""Per-item BSAP and NNN offsets of many items in one pass, at the machine's matmul speed.

For each block of ``block`` items: one matmul against the BSAP bank, the log-sum-exp taken in place
(shifted by the row's maximum), one matmul against the NNN references and their top k averaged
(torch's ``topk``: no full partition). When the bank and the references are the same rows (a build
samples one set for both where it can), one matmul serves both. Arrays in, arrays out; torch is
imported when called (the build already runs it).

Precision (``precision``): ``"fp32"`` equals ``rerank.bsap_offsets`` and ``rerank.nnn_bias`` up to
float32 rounding. ``"bf16"`` multiplies in bfloat16 with float32 inputs, accumulation and output
(oneDNN's bf16 math mode: 3-5x the float32 matmul speed with AMX; on an AMD EPYC with AVX512-BF16
and no AMX it computes float32 exactly, ~1.2x faster, so there every call, fp32 or bf16, runs float32
rows through it uncentred and ``recorded_math`` says fp32), on *centred* rows:
s(x, b) = (x - ν)·(b - μ) + x·μ + ν·b - ν·μ with ν, μ the items' and the bank's means, the rank-one
terms in float32. CLIP embeddings share a large mean direction (norm ~0.7-0.8 of each row),
so rounding the raw rows gives offsets errors of ~2e-4 rms; centred, ~2-3e-5 rms and 1.3e-4 at most
on real CLIP embeddings, the size of the fp16 rounding the stored offsets already get
(``store.combined.quantize_offsets``, docs/benchmarks.md "Write path"). ``"auto"`` (the default) is
bf16 where the CPU multiplies bf16 natively, else fp32. Calls of fewer than ``BF16_MIN_ITEMS`` items
(small appends) run in fp32 math whatever is asked: there the bf16 set-up costs more than it saves.

The bf16 mode is torch's process-wide ``torch.backends.mkldnn.matmul.fp32_precision``: set under a
lock for the duration of the call and restored after; another thread's float32 CPU matmuls in the
same process run in bf16 math meanwhile (the engine runs none beside a build, bias or append).
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from ..store import bf16
from ..store.bf16 import matmul_math
from ..store.cast import cast

TOP_CHUNK = 16  # columns per chunk in ``top_mean``
BLOCK = 1024  # items per matmul: 1024 x 4096 float32 scores (16 MB) stay in cache-friendly range
ENV = "RETRIEVAL_OFFSETS_PRECISION"
# Fewer items than this run in fp32 math whatever the precision asked (at least as exact): the bf16
# path's set-up (the centred bank) and its slower element-wise passes cost more than its matmul saves.
# Measured per call, shared 4,096-row bank, d = 512: 5k items 143 vs 81 ms, 10k 152 vs 158 ms, 20k
# 248 vs 326 ms, 200k 1.66 vs 3.21 s (bf16 vs fp32)
BF16_MIN_ITEMS = 16384


def auto_precision() -> str:
    """"bf16" where the CPU multiplies bf16 natively (Linux's /proc/cpuinfo says so), else "fp32";
    the environment variable RETRIEVAL_OFFSETS_PRECISION (fp32 or bf16) overrides."""
    return bf16.auto_precision(ENV)


def resolve_precision(precision: str) -> str:
    """"fp32" or "bf16" for one of ``store.bf16.PRECISIONS`` ("auto": ``auto_precision``); ValueError otherwise."""
    return bf16.resolve_precision(precision, ENV)


def math_for(n: int, precision: str) -> str:
    """The math ``item_offsets`` of ``n`` items runs in for ``precision``: fp32 below BF16_MIN_ITEMS."""
    precision = resolve_precision(precision)
    return "fp32" if n < BF16_MIN_ITEMS else precision


def recorded_math(n: int, precision: str) -> str:
    """The arithmetic ``item_offsets`` of ``n`` items with ``precision`` really runs: "bf16" where it
    runs the bf16 path and the CPU's bf16 math mode rounds (``store.bf16.mode_rounds``), else "fp32"
    (what a folder records)."""
    return "bf16" if math_for(n, precision) == "bf16" and bf16.mode_rounds() else "fp32"


def item_offsets(items: np.ndarray, bank: np.ndarray, refs: np.ndarray, tau: float, k: int,
                 block: int = BLOCK, precision: str = "auto") -> dict[str, np.ndarray]:
    """{"bsap": c_j = LSE_m(τ s(j, a_m)) / τ, "nnn": mean of the k largest s(r, j)} for items [n, d]."""
    import torch

    x = np.asarray(items)
    if x.dtype not in (np.float16, np.float32) or not x.flags.c_contiguous:   # fp16 rows are converted a block at a time
        x = np.ascontiguousarray(x, np.float32)
    b, r = (np.ascontiguousarray(a, np.float32) for a in (bank, refs))
    if x.ndim != 2 or b.ndim != 2 or r.ndim != 2 or not (x.shape[1] == b.shape[1] == r.shape[1]):
        raise ValueError(f"items {x.shape}, bank {b.shape} and references {r.shape} must be [n, d] of one d")
    if not len(b) or not len(r) or k <= 0:
        raise ValueError("offsets need a non-empty bank, non-empty references and k > 0")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    precision = math_for(len(x), precision)
    k = min(k, len(r))
    shared = b.shape == r.shape and (np.shares_memory(b, r) or np.array_equal(b, r))  # one sample for both
    out_b, out_n = np.empty(len(x), np.float32), np.empty(len(x), np.float32)
    if not len(x):
        return {"bsap": out_b, "nnn": out_n}
    # bf16 math on centred rows where the mode rounds; where its kernel computes float32 (an EPYC with
    # AVX512-BF16, no AMX), float32 rows through that faster kernel, whatever precision was asked
    centred = precision == "bf16" and bf16.mode_rounds()
    kernel = "bf16" if centred or bf16.mode_is_fp32() else "fp32"
    if centred:   # the centred path reads every row twice (ν, x·μ): float32 once
        x = cast(x, np.float32)
    nu = x.mean(0, dtype=np.float64) if centred else None
    bank_side = _Side(b, x, nu, float(tau), torch)       # scores τ·s(x, a): the log-sum-exp's scale
    ref_side = bank_side if shared else _Side(r, x, nu, 1.0, torch)
    with warnings.catch_warnings():   # read-only items (a memory-mapped npy): nothing here writes to them
        warnings.simplefilter("ignore", UserWarning)
        X = torch.from_numpy(x)
    nu32 = torch.from_numpy(nu.astype(np.float32)) if centred else None
    ob, on = torch.from_numpy(out_b), torch.from_numpy(out_n)
    width = min(block, len(x))
    bufs = [torch.empty(width, len(b))] + ([] if shared else [torch.empty(width, len(r))])  # reused across blocks
    xbuf = torch.empty(width, x.shape[1]) if centred or x.dtype != np.float32 else None
    with torch.inference_mode(), matmul_math(torch, kernel):
        for i in range(0, len(x), block):
            blk = X[i:i + block]
            if centred:
                xc = torch.sub(blk, nu32, out=xbuf[:len(blk)])
            else:
                xc = blk if xbuf is None else xbuf[:len(blk)].copy_(blk)   # fp16 rows: torch's conversion
            s = bank_side.scores(xc, bufs[0][:len(xc)])
            sr = s if shared else ref_side.scores(xc, bufs[1][:len(xc)])
            top, m = top_mean(sr, k, with_max=shared)   # one sample: its row maxima serve the log-sum-exp
            on[i:i + block] = top / ref_side.scale + ref_side.row(i, len(xc))
            m = s.amax(1, keepdim=True) if m is None else m[:, None]  # the log-sum-exp last: it overwrites s
            ob[i:i + block] = (m.squeeze(1) + s.sub_(m).exp_().sum(1).log_()) / tau + bank_side.row(i, len(xc))
    return {"bsap": out_b, "nnn": out_n}


def top_mean(s, k: int, chunk: int = TOP_CHUNK, with_max: bool = False):
    """Mean of the k largest of each row of s [n, m] (a float32 torch tensor; a torch tensor back;
    with ``with_max``, (that, each row's maximum) read off the group maxima, else (that, None)).
    The columns are cut into groups of ``chunk`` (column j, j + g, j + 2g, ...: the max is then a
    contiguous reduction); the k groups with the largest maxima hold the k largest values (a value
    outside them has k group maxima above it). Those groups are the ones whose maximum reaches the
    k-th largest maximum (numpy's introselect: ~3x faster than torch's ``topk`` on rows this short),
    and the k largest of their values are selected the same way: ~3x less time than two top-k's."""
    import torch

    n, m = s.shape
    whole = m - m % chunk
    groups = whole // chunk
    if groups < 4 * k:
        v = s.numpy()
        mean = torch.from_numpy(np.partition(v, m - k, axis=1)[:, m - k:].mean(1, dtype=np.float32))
        return (mean, s.amax(1)) if with_max else (mean, None)
    parts = s[:, :whole].reshape(n, chunk, groups)          # a view when s is contiguous
    g = parts.amax(1).numpy()                                 # [n, groups] group maxima
    top = None
    if with_max:
        top = torch.from_numpy(g.max(1))
        if whole < m:
            top = torch.maximum(top, s[:, whole:].amax(1))
    kth = np.partition(g, groups - k, axis=1)[:, groups - k]  # the k-th largest maximum of each row
    at = np.flatnonzero(g >= kth[:, None])   # row-major: each row's groups in turn
    if len(at) == n * k:   # every row has >= k, so exactly k in each (unless maxima tie)
        best = (at % groups).reshape(n, k)
    else:
        best = np.argpartition(g, groups - k, axis=1)[:, groups - k:]
    cand = parts.gather(2, torch.from_numpy(best)[:, None, :].expand(n, chunk, k)).reshape(n, chunk * k)
    if whole < m:
        cand = torch.cat((cand, s[:, whole:]), 1)
    c = cand.numpy()
    mean = torch.from_numpy(np.partition(c, c.shape[1] - k, axis=1)[:, c.shape[1] - k:].mean(1, dtype=np.float32))
    return mean, top


class _Side:
    """One matmul's right side (the bank or the references), times ``scale``, and, centred, its
    rank-one terms: ``scores`` gives scale·(s(x, ·) - x·μ); ``row`` gives back the x·μ."""

    def __init__(self, rows: np.ndarray, items: np.ndarray, nu: Optional[np.ndarray], scale: float, torch):
        """``nu``: the items' mean (float64) when centred, else None."""
        self.scale, self.col, self.rows, self.torch = scale, None, None, torch
        if nu is None:    # seen transposed (BLAS transposes); scaled once here, not every block's scores
            if scale != 1.0:
                rows = rows * np.float32(scale)
            with warnings.catch_warnings():   # read-only banks: torch warns that it could write; nothing does
                warnings.simplefilter("ignore", UserWarning)
                self.T = torch.from_numpy(rows).T
            return
        mu = rows.mean(0, dtype=np.float64)
        # [m, d] rows seen transposed (a view): BLAS's "NT" product ran ~1.6x faster than a [d, m] copy
        self.T = torch.from_numpy((rows - mu.astype(np.float32)) * np.float32(scale)).T
        self.col = torch.from_numpy((scale * (rows.astype(np.float64) @ nu - nu @ mu)).astype(np.float32))[None, :]
        self.rows = torch.from_numpy(items @ mu.astype(np.float32))   # x·μ (numpy: float32 math)

    def scores(self, xc, out):
        s = self.torch.matmul(xc, self.T, out=out)
        return s if self.col is None else s.add_(self.col)

    def row(self, i: int, n: int):
        return 0.0 if self.rows is None else self.rows[i:i + n]
