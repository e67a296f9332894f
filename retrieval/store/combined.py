"""One index per modality for every method: vectors [e_j, -(c_bsap_j - s_b), -(c_nnn_j - s_n)] searched
with queries [q, β, α] score s(q, j) - β (c_bsap_j - s_b) - α (c_nnn_j - s_n) (DESIGN §4):

- plain CLIP: β = α = 0 (the extra coordinates contribute nothing);
- exact BSAP: β = 1, then subtract s_b; exact NNN: any α, then subtract α s_n.

The shifts s (mean offsets, kept in the manifest) centre the extra coordinates. The coarse quantiser
of an IVF index is trained with the extra coordinates at zero, so its centroids are zero there:
list assignment and probing depend on e and q only, whatever β and α are, and the tuned nprobe serves
every method. The dimension is zero-padded to a multiple of 16 (SIMD scanners), PQ keys' to a
multiple of their sub-quantisers; OPQ maps the input to an output dimension its PQ can split.
"""
from __future__ import annotations

import math
import re
from typing import Optional

import numpy as np

from .cast import cast

EXTRA = ("bsap", "nnn")  # the order of the extra coordinates
# faiss's scalar-quantizer scanners use SIMD only when the dimension is a multiple of 16 (AVX-512) or
# 8: at d = 514 an IVF-SQfp16 search ran 10x slower than at 512 or 528 (measured), so the combined
# vectors are zero-padded to a multiple of 16 (+3 % of the codes at d = 512)
SIMD_WIDTH = 16


def combined_layout(key: str, d: int) -> tuple[str, int]:
    """(factory key, vector dim) of the combined index for a shard of key ``key`` at dim ``d``."""
    opq = re.match(r"OPQ(\d+)_(\d+),", key)
    if opq:
        m = int(opq.group(1))
        return f"OPQ{m}_{math.ceil((d + 2) / m) * m}," + key[opq.end():], d + 2
    pq = re.search(r"PQ(\d+)", key)
    if pq:
        m = int(pq.group(1))
        return key, math.ceil((d + 2) / m) * m
    return key, math.ceil((d + 2) / SIMD_WIDTH) * SIMD_WIDTH


def combine_vectors(items: np.ndarray, offsets: Optional[dict] = None, shifts: Optional[dict] = None,
                    dim: Optional[int] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """[e, -(c_bsap - s_b), -(c_nnn - s_n), 0...] as float32 [n, dim]; zeros where there are no offsets
    yet. ``out``: a C-contiguous float32 [n, dim] array to write them into (every value is written)."""
    items = np.asarray(items)   # fp16 rows are converted as they are copied in: one pass, no float32 copy
    if items.ndim != 2:
        raise ValueError(f"items must be 2-D, got {items.shape}")
    n, d = items.shape
    dim = dim or d + 2
    if dim < d + 2:
        raise ValueError(f"a combined vector needs dim >= {d + 2}, got {dim}")
    if out is None:
        out = np.empty((n, dim), np.float32)
    elif out.shape != (n, dim) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 {(n, dim)}, got {out.dtype} {out.shape}")
    cast(items, np.float32, out=out[:, :d])
    out[:, d:] = 0
    for j, method in enumerate(EXTRA):
        if offsets is not None and offsets.get(method) is not None:
            c = np.asarray(offsets[method], np.float32)
            if len(c) != n:
                raise ValueError(f"{len(c)} {method} offsets for {n} items")
            out[:, d + j] = -(c - np.float32((shifts or {}).get(method, 0.0)))
    return out


ADD_CHUNK = 65536  # rows combined and added at a time: ~35 MB of float32 at d = 512, not a full copy


def offsets_columns(offsets: Optional[dict], shifts: Optional[dict], n: int) -> np.ndarray:
    """The extra coordinates [n, 2] (-(c_bsap - s_b), -(c_nnn - s_n); zeros where there are none)."""
    out = np.zeros((n, len(EXTRA)), np.float32)
    for j, method in enumerate(EXTRA):
        if offsets is not None and offsets.get(method) is not None:
            out[:, j] = -(np.asarray(offsets[method], np.float32) - np.float32((shifts or {}).get(method, 0.0)))
    return out


def offsets_at(offsets: Optional[dict], rows) -> Optional[dict]:
    """{method: offsets[method][rows]} (rows: a slice or ids) of {method: [n] or None}; None stays None."""
    if offsets is None:
        return None
    return {m: None if offsets.get(m) is None else np.asarray(offsets[m])[rows] for m in EXTRA}


def add_combined(index, items: np.ndarray, offsets: Optional[dict], shifts: Optional[dict], dim: int,
                 chunk: int = ADD_CHUNK, queries: Optional[np.ndarray] = None, k: int = 10) -> Optional[np.ndarray]:
    """``index.add`` of the combined vectors of ``items`` [n, d] (any float dtype), ``chunk`` rows at
    a time: the [n, dim] float32 array is never built. With ``queries`` [nq, d], also their exact
    top-``k`` ids among the items (inner product; -1 past n), from the same float32 chunks."""
    from .assign import ivf_add
    from .faiss_index import ExactTopK

    top = None
    if queries is not None:   # zeros on the extra coordinates: the items' own inner products, and
        padded = np.zeros((len(queries), dim), np.float32)   # each chunk is searched as it is (no copy)
        padded[:, :queries.shape[1]] = queries
        top = ExactTopK(padded, k)
    buf = np.empty((min(chunk, len(items)), dim), np.float32)   # one buffer for every chunk: faiss copies what it adds
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        x = combine_vectors(part, offsets_at(offsets, slice(i, i + chunk)), shifts, dim, out=buf[:len(part)])
        ivf_add(index, x)
        if top is not None:
            top.add(x, i)
    return None if top is None else top.ids()


def quantize_offsets(offsets: np.ndarray, shift: float) -> np.ndarray:
    """Offsets moved to the values the fp16 codes can hold exactly: c' with -(c' - s) an fp16 number
    (|c' - c| <= ~3e-5 for centred offsets). Stored offsets are quantized, so the index's scores and
    an exact scan of the stored offsets agree bit for bit, whatever rounding faiss's fp16 encoder uses."""
    s = np.float32(shift)
    h = (-(np.asarray(offsets, np.float32) - s)).astype(np.float16).astype(np.float32)
    return (s - h).astype(np.float32)


def combine_query(q: np.ndarray, dim: int, bsap: float = 0.0, nnn: float = 0.0) -> np.ndarray:
    """[q, β, α, 0...] as float32 [n, dim]."""
    q = np.atleast_2d(np.asarray(q, np.float32))
    out = np.zeros((len(q), dim), np.float32)
    d = q.shape[1]
    out[:, :d] = q
    out[:, d], out[:, d + 1] = bsap, nnn
    return out
