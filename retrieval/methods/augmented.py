"""Bias-augmented faiss indexes: exact-form BSAP/NNN search through the shard's own index type.

With per-item offsets c_j, ranking by s(q, j) - α c_j is inner-product search over augmented
vectors [e_j, -(c_j - shift)] with queries [q, α] (DESIGN §4). One augmented index per shard,
method and modality serves every α; the constant ``shift`` (the mean offset, stored in the
manifest) keeps the extra coordinate centred for quantisers and is added back to the scores.

The augmented index has the shard's index type at dim d+1 (padded with zeros where PQ needs a
multiple of its sub-quantisers). IVF shards with a flat coarse quantiser reuse its trained
centroids, padded with a 0 coordinate: coarse assignment of [e, .] and probing with [q, α] then
equal the plain index's, so the same tuned nprobe gives the same cost and recall.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..store.keys import sample_ids, train_size


def augmented_layout(key: str, d: int) -> tuple[str, int]:
    """(factory key, vector dim) of the augmented index for a shard built with ``key`` at dim ``d``."""
    opq = re.match(r"OPQ(\d+)_(\d+),", key)
    if opq:  # OPQ maps the d+1 input to an output dim that its PQ can split
        m = int(opq.group(1))
        out = math.ceil((d + 1) / m) * m
        return f"OPQ{m}_{out}," + key[opq.end():], d + 1
    pq = re.search(r"PQ(\d+)", key)
    if pq:
        m = int(pq.group(1))
        return key, math.ceil((d + 1) / m) * m
    return key, d + 1


def augment_vectors(items: np.ndarray, neg_offsets: np.ndarray, dim: int) -> np.ndarray:
    """[e_j, neg_offsets_j, 0...] as float32 [n, dim]."""
    items = np.asarray(items, np.float32)
    if items.ndim != 2 or len(neg_offsets) != len(items) or dim < items.shape[1] + 1:
        raise ValueError(f"cannot augment {items.shape} items with {len(neg_offsets)} offsets to dim {dim}")
    out = np.zeros((len(items), dim), np.float32)
    out[:, :items.shape[1]] = items
    out[:, items.shape[1]] = neg_offsets
    return out


def augment_query(q: np.ndarray, alpha: float, dim: int) -> np.ndarray:
    """[q, α, 0...] as float32 [n, dim]."""
    q = np.atleast_2d(np.asarray(q, np.float32))
    out = np.zeros((len(q), dim), np.float32)
    out[:, :q.shape[1]] = q
    out[:, q.shape[1]] = alpha
    return out


def _flat_ivf(index):
    """The IndexIVF of ``index`` if it is a bare IVF over a flat coarse quantiser, else None."""
    import faiss

    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexIVF):
        return None
    quantizer = faiss.downcast_index(index.quantizer)
    return index if isinstance(quantizer, faiss.IndexFlat) else None


def build_augmented(plain, key: str, items: np.ndarray, offsets: np.ndarray, shift: float, seed: int = 0):
    """The augmented index of one shard: vectors [e, -(offsets - shift)] in the shard's index type.

    ``plain`` is the shard's trained faiss index (its IVF centroids are reused when possible).
    """
    import faiss

    d = items.shape[1]
    aug_key, dim = augmented_layout(key, d)
    x = augment_vectors(items, -(np.asarray(offsets, np.float32) - np.float32(shift)), dim)
    if key == "Flat":
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index
    index = faiss.index_factory(dim, aug_key, faiss.METRIC_INNER_PRODUCT)
    src, dst = _flat_ivf(plain), _flat_ivf(index)
    if src is not None and dst is not None and src.nlist == dst.nlist:
        cents = src.quantizer.reconstruct_n(0, src.nlist)
        padded = np.zeros((src.nlist, dim), np.float32)
        padded[:, :d] = cents
        dst.quantizer.add(padded)  # faiss skips coarse training when the quantiser already holds nlist
        if aug_key.endswith(",Flat"):
            dst.is_trained = True  # IVF-Flat has nothing else to train
    if not index.is_trained:
        n = len(x)
        index.train(x[sample_ids(n, train_size(aug_key, n) or min(n, 256 * 39), seed)])
    index.add(x)
    return index
