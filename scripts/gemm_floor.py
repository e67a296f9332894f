"""The products a build's second stage (or an append's offsets) cannot skip, timed bare in the same run
as the build they bound (``bench_write_path.py``): per modality, the items against a 4,096-row bank
(the BSAP log-sum-exp and the NNN top-k share one product where the bank and the references are one
sample, as a build stores them) and the λ calibration's 1,000 query pairs against every item, all in
the fastest float32 kernel this CPU has (oneDNN's bf16 math mode where it computes float32, else
torch's default), in the engine's blocks, on float32 rows already in memory. Nothing else: no
exponentials, no top-k, no conversion, no write. A build can be no faster than its searchable stage
plus these.
"""
from __future__ import annotations

import numpy as np


def exact_kernel() -> str:
    """The math of the fastest float32 products here: "bf16" (the mode's kernel) where it computes
    float32, else "fp32"."""
    from retrieval.store.bf16 import mode_is_fp32

    return "bf16" if mode_is_fp32() else "fp32"


def offset_products(vectors: list[np.ndarray], bank_rows: int = 4096, block: int = 1024) -> float:
    """Seconds for every item of each array against ``bank_rows`` of that array's rows (a bank's size;
    which rows does not change the time)."""
    import time

    import torch

    from retrieval.store.bf16 import matmul_math

    t = time.perf_counter()
    with torch.inference_mode(), matmul_math(torch, exact_kernel()):
        for x in vectors:
            X = torch.from_numpy(np.ascontiguousarray(x, np.float32))
            bank = X[:bank_rows].T.contiguous()
            out = torch.empty(block, bank.shape[1])
            for i in range(0, len(X), block):
                blk = X[i:i + block]
                torch.matmul(blk, bank, out=out[:len(blk)])
    return time.perf_counter() - t


def calibration_products(vectors: list[np.ndarray], pairs: int = 1000, block: int = 2048) -> float:
    """Seconds for ``pairs`` query rows against every item of each array (the λ calibration's
    products, one direction per array)."""
    import time

    import torch

    from retrieval.store.bf16 import matmul_math

    t = time.perf_counter()
    with torch.inference_mode(), matmul_math(torch, exact_kernel()):
        for x in vectors:
            X = torch.from_numpy(np.ascontiguousarray(x, np.float32))
            q = X[-pairs:].contiguous()
            out = torch.empty(len(q), block)
            for i in range(0, len(X), block):
                blk = X[i:i + block]
                torch.matmul(q, blk.T, out=out[:, :len(blk)])
    return time.perf_counter() - t
