"""Float16 <-> float32 copies of large arrays at memory speed.

numpy converts float16 one value at a time: 0.17-0.26 s per 200,000 x 512 rows on a 2-core EPYC,
about as long as faiss takes to add them to an IVF. torch's conversion kernels (F16C, every core)
write the same values in ~13 ms. ``cast`` takes torch where the process has already imported it, or
where the array is large enough to pay for the import (a build of 200k rows imports it for its
k-means and offsets anyway), and numpy elsewhere: reading paths and small writes never import torch
for it. The values are the same either way (both round to nearest even; tested bit for bit).
"""
from __future__ import annotations

import sys
import warnings
from typing import Optional

import numpy as np

MIN_VALUES = 1 << 16      # below this numpy's loop costs about what a call into torch does
IMPORT_VALUES = 1 << 25   # from this size (65,536 x 512) a cast imports torch (~1 s, once per process)
_TORCH_DTYPES = ("float16", "float32")   # float64 -> float16 through torch rounds twice


def use_torch(n_values: int, loaded: bool, min_values: int = MIN_VALUES) -> bool:
    """Whether a cast of ``n_values`` values goes through torch, ``loaded`` saying whether the
    process has imported it: at least ``min_values`` (large enough to beat numpy), and torch loaded
    or worth loading."""
    return n_values >= min_values and (loaded or n_values >= IMPORT_VALUES)


def cast(a: np.ndarray, dtype, out: Optional[np.ndarray] = None, min_values: int = MIN_VALUES) -> np.ndarray:
    """A new array of ``a``'s values as ``dtype`` (``astype``), or written into ``out`` (same shape,
    any strides) and returned. ``min_values``: the smallest cast torch takes (code that queries call,
    between BLAS calls, passes IMPORT_VALUES: torch's threads left spinning after its kernels made
    OpenBLAS's next matmul wait, 2.5 vs 1.8 s in a calibration loop)."""
    a = np.asarray(a)
    dtype = np.dtype(dtype)
    if out is not None:
        if out.shape != a.shape:
            raise ValueError(f"cannot cast {a.shape} into {out.shape}")
        dtype = out.dtype
    if not (_torchable(a) and dtype.name in _TORCH_DTYPES
            and use_torch(a.size, "torch" in sys.modules, min_values)) or (out is not None and not _torchable(out)):
        if out is None:
            return a.astype(dtype)
        np.copyto(out, a, casting="unsafe")
        return out
    import torch

    dst = np.empty(a.shape, dtype) if out is None else out
    with warnings.catch_warnings():   # a read-only source (a memory-mapped npy): torch only reads it
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(dst).copy_(torch.from_numpy(a))
    return dst


def _torchable(a: np.ndarray) -> bool:
    """torch.from_numpy can view ``a``: a native-order float array with non-negative strides."""
    return a.dtype.name in _TORCH_DTYPES and a.dtype.isnative and all(s >= 0 for s in a.strides) and a.ndim > 0
