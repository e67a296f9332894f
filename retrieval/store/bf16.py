"""Whether and how this CPU multiplies in bfloat16: the one rule the build's GEMM-bound steps share
(the coarse k-means, ``store.kmeans``; the BSAP/NNN offsets, ``methods.offsets``).

bf16 pays where the CPU multiplies it natively (Intel AMX-BF16, AVX512-BF16 on Intel and AMD):
Linux's /proc/cpuinfo says so. Elsewhere torch emulates bf16 and float32 is faster. Each step has
its own environment variable that forces ``fp32`` or ``bf16`` (for measuring, or to opt out).

Two ways to multiply in bf16: bf16 tensors (always bf16: the k-means), and oneDNN's bf16 *math
mode* for float32 tensors (the offsets). The mode rounds the products to bf16 only where oneDNN has
a kernel for it: with AMX it does; on an AMD EPYC with AVX512-BF16 and no AMX it was seen computing
float32 exactly (and ~1.2x faster than the default float32 kernel). ``mode_rounds`` tells which, so
what a folder records as its math is what ran.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

PRECISIONS = ("auto", "fp32", "bf16")
_FLAG = threading.Lock()


def native_bf16(cpu_flags: str) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags multiplies bf16 natively (AMX or AVX512-BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_flags.split()))


@functools.lru_cache(maxsize=1)
def cpu_flags() -> str:
    """This CPU's /proc/cpuinfo flags ('' where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def auto_precision(env: str) -> str:
    """"bf16" where the CPU multiplies bf16 natively, else "fp32"; the environment variable ``env``
    (fp32 or bf16) overrides."""
    forced = os.environ.get(env, "").strip().lower()
    if forced in ("fp32", "bf16"):
        return forced
    return "bf16" if native_bf16(cpu_flags()) else "fp32"


def resolve_precision(precision: str, env: str) -> str:
    """"fp32" or "bf16" for one of PRECISIONS ("auto": ``auto_precision(env)``); ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return auto_precision(env) if precision == "auto" else precision


@functools.lru_cache(maxsize=1)
def mode_error() -> float:
    """How far oneDNN's bf16 math mode is from float32 on this CPU: the largest difference of one
    seeded [512, 512] x [512, 1024] product in both modes, relative to its largest value (a few ms,
    once per process)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 512, generator=g), torch.randn(512, 1024, generator=g)
    with torch.inference_mode():
        exact = a @ b
        with matmul_math(torch, "bf16"):
            got = a @ b
    return float((got - exact).abs().max() / exact.abs().max())


def mode_rounds() -> bool:
    """Whether oneDNN's bf16 math mode rounds float32 products to bf16 on this CPU (``mode_error``)."""
    return mode_error() > 1e-3


def mode_is_fp32() -> bool:
    """Whether the bf16 math mode's kernel computes float32 here (to float32's own reordering): then
    it serves float32 products too, ~1.2x faster than the default kernel on an AMD EPYC with
    AVX512-BF16 (where no bf16 kernel exists for it)."""
    return mode_error() <= 1e-5


def torch_fp32_faster() -> bool:
    """Whether torch is loaded and its float32 products, through the bf16 mode's kernel, run faster
    than faiss's and numpy's here: the mode computes float32 (``mode_is_fp32``) on a CPU with native
    bf16 (~210 vs ~170 GFLOP/s on a 2-core EPYC; elsewhere torch's default kernel was no faster)."""
    return "torch" in sys.modules and native_bf16(cpu_flags()) and mode_is_fp32()


@contextlib.contextmanager
def matmul_math(torch, precision: str):
    """float32 CPU matmuls in ``precision`` ("bf16" or "fp32") inside the block, restored after
    (oneDNN's bf16 math mode: float32 in and out, bf16 products; torch's process-wide flag, set
    under a lock)."""
    mm = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if precision != "bf16" or mm is None or not hasattr(mm, "fp32_precision"):
        yield
        return
    with _FLAG:
        before = mm.fp32_precision
        mm.fp32_precision = "bf16"
        try:
            yield
        finally:
            mm.fp32_precision = before
