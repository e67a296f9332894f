"""Per-item BSAP and NNN offsets of many items in one pass, at the machine's matmul speed.

For each block of ``block`` items: one matmul against the BSAP bank, the log-sum-exp taken in place
(shifted by the row's maximum), one matmul against the NNN references and their top k averaged
(torch's ``topk``: no full partition). When the bank and the references are the same rows (a build
samples one set for both where it can), one matmul serves both. Equal to ``rerank.bsap_offsets`` and ``rerank.nnn_bias`` up to
float32 rounding; what a build, ``retrieval bias``, appends and import compute. Arrays in, arrays out;
torch is imported when called (the build already runs it). Both this and the numpy pair are
matmul-bound: at 200k items both ran at 0.80x of the bare matmul speed (docs/benchmarks.md "Write
path"); torch's ``topk`` is what saves time on smaller blocks of work.
"""
from __future__ import annotations

import warnings

import numpy as np

BLOCK = 1024  # items per matmul: 1024 x 4096 float32 scores (16 MB) stay in cache-friendly range


def item_offsets(items: np.ndarray, bank: np.ndarray, refs: np.ndarray, tau: float, k: int,
                 block: int = BLOCK) -> dict[str, np.ndarray]:
    """{"bsap": c_j = LSE_m(τ s(j, a_m)) / τ, "nnn": mean of the k largest s(r, j)} for items [n, d]."""
    import torch

    x, b, r = (np.ascontiguousarray(a, np.float32) for a in (items, bank, refs))
    if x.ndim != 2 or b.ndim != 2 or r.ndim != 2 or not (x.shape[1] == b.shape[1] == r.shape[1]):
        raise ValueError(f"items {x.shape}, bank {b.shape} and references {r.shape} must be [n, d] of one d")
    if not len(b) or not len(r) or k <= 0:
        raise ValueError("offsets need a non-empty bank, non-empty references and k > 0")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    k = min(k, len(r))
    out_b, out_n = np.empty(len(x), np.float32), np.empty(len(x), np.float32)
    with warnings.catch_warnings():  # read-only banks: torch warns that it could write to them; nothing here does
        warnings.simplefilter("ignore", UserWarning)
        X, B, R = torch.from_numpy(x), torch.from_numpy(b).T, torch.from_numpy(r).T  # views: BLAS transposes
    ob, on = torch.from_numpy(out_b), torch.from_numpy(out_n)
    shared = b.shape == r.shape and (np.shares_memory(b, r) or np.array_equal(b, r))  # one sample for both
    with torch.inference_mode():
        for i in range(0, len(x), block):
            xc = X[i:i + block]
            s = xc @ B
            on[i:i + block] = torch.topk(s if shared else xc @ R, k, 1, sorted=False).values.mean(1)
            m = s.amax(1, keepdim=True)  # the log-sum-exp last: it overwrites s
            ob[i:i + block] = m.squeeze(1) + s.sub_(m).mul_(tau).exp_().sum(1).log_() / tau
    return {"bsap": out_b, "nnn": out_n}
