"""An IVF's list assignment and the tuning's exact top-k through the faster float32 kernel where this
CPU has one.

faiss finds the lists of the rows it adds with its own sgemm, and ``ExactTopK`` finds the tuning's
exact neighbours with faiss's knn: ~170 and ~175 GFLOP/s on a 2-core EPYC. Where oneDNN's bf16 math
mode computes float32 (``store.bf16.mode_is_fp32``: that CPU, AVX512-BF16 without AMX), torch's
matmul under it runs ~210. There, with torch loaded (``store.bf16.torch_fp32_faster``), ``ivf_add``
assigns the rows by that product (numpy's argmax) and hands them to faiss's ``add_core``
(``faiss.contrib.ivf_tools.add_preassigned``: the ids and direct map ``add`` gives), and ``top_k``
gives a chunk's top-k. Elsewhere faiss does
both. Float32 either way: only rows whose two best centroids tie to float32 rounding may go to the
other one, as they may under faiss's own blocking.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import bf16
from .coarse import centroids, flat_ivf

MIN_ROWS = 4096       # fewer rows: faiss's own add
BLOCK = 2048          # rows per product: 2,048 x nlist float32 scores
_PLAIN = ("IndexIVFFlat", "IndexIVFScalarQuantizer", "IndexIVFPQ")


def ivf_add(index, x: np.ndarray) -> None:
    """``index.add(x)`` (x float32 C-contiguous [n, index.d]), the lists found by ``assign`` where
    the faster kernel is here and ``index`` is a plain IVF with a flat inner-product quantizer."""
    ivf = _plain_ivf(index) if len(x) >= MIN_ROWS and bf16.torch_fp32_faster() else None
    if ivf is None:
        index.add(x)
        return
    from faiss.contrib.ivf_tools import add_preassigned

    add_preassigned(ivf, x, assign(centroids(ivf), x))


def assign(centroids: np.ndarray, x: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Each row's best centroid by inner product (int64 [n]), ``block`` rows a product."""
    import torch

    c = torch.from_numpy(np.ascontiguousarray(centroids, np.float32)).T
    X = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    out = np.empty(len(x), np.int64)
    buf = torch.empty(min(block, len(x)), c.shape[1])
    with torch.inference_mode(), bf16.matmul_math(torch, "bf16"):   # float32 here (``bf16.torch_fp32_faster``)
        for i in range(0, len(x), block):
            s = torch.matmul(X[i:i + block], c, out=buf[:len(X[i:i + block])])
            out[i:i + block] = s.numpy().argmax(1)   # numpy's: ~6x faster than torch's on these rows
    return out


def top_k(q: np.ndarray, x: np.ndarray, k: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(scores, ids) [nq, k] of the k largest inner products of queries ``q`` among rows ``x``
    (float32), through the faster kernel; None where it is not here (the caller uses faiss)."""
    if not bf16.torch_fp32_faster() or len(x) < k:
        return None
    import torch

    with torch.inference_mode(), bf16.matmul_math(torch, "bf16"):
        s = torch.matmul(torch.from_numpy(q), torch.from_numpy(x).T)
        top = s.topk(k, 1)
    return top.values.numpy(), top.indices.numpy().astype(np.int64)


def _plain_ivf(index):
    """The IVF itself when ``index`` is one of the _PLAIN kinds (not under a transform) over inner
    products whose flat quantizer (``coarse.flat_ivf``) holds its nlist centroids, else None."""
    import faiss

    if type(faiss.downcast_index(index)).__name__ not in _PLAIN:
        return None
    ix = flat_ivf(index)
    if (ix is None or not ix.is_trained or ix.metric_type != faiss.METRIC_INNER_PRODUCT
            or ix.quantizer.metric_type != faiss.METRIC_INNER_PRODUCT or ix.quantizer.ntotal != ix.nlist):
        return None
    return ix
