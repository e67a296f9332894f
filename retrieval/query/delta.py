"""The small Flat shards (appends of a few rows) joined to the IVF shards' one search.

Without a filter, the IVF shards sharing the folder's quantizer are one faiss ``IndexShardsIVF``
search (``query.coarse``); the small Flat shards were a second scan and a merge (``query.flat_group``:
~50 µs a query on top of ~170 µs). Here their rows are added, in memory, to one more IVF index on the
same quantizer (fp16 codes of the combined vectors, the stored offsets in the extra coordinates, as
the shards hold them) that joins the group: one search, and those rows are found through the lists
like any appended shard's once ``compact`` merges them (the tuned nprobe's recall, no longer an
exact scan). Made on first use, per snapshot of shards and offsets: ~7 ms per 1,000 rows.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..store.combined import EXTRA, combine_vectors
from .coarse import CoarseGroup
from .flat_group import FlatGroup


def delta_joined(group: CoarseGroup, flat: FlatGroup, offsets: Optional[dict], shifts: dict):
    """(IndexShardsIVF over ``group``'s shards and an in-memory IVF of ``flat``'s rows, its
    SearchParametersIVF, the global id of each of its ids then -1, the IVF kept alive), or None when
    the group's shards do not qualify (their nprobe differ, or their codes are not fp16 vectors).
    ``offsets``: {method: [flat rows]} (None: zeros); ``shifts``: {method: s}."""
    import faiss

    base = group.joined()
    ivf = group.ivfs[0]
    if base is None or not (isinstance(ivf, faiss.IndexIVFScalarQuantizer) and not ivf.by_residual
                            and ivf.sq.qtype == faiss.ScalarQuantizer.QT_fp16):
        return None
    delta = faiss.IndexIVFScalarQuantizer(ivf.quantizer, ivf.d, ivf.nlist, faiss.ScalarQuantizer.QT_fp16,
                                          ivf.metric_type, False)
    delta.is_trained = True   # the quantizer is trained, and fp16 codes need no training
    delta.add(combine_vectors(flat.vectors, offsets, shifts, ivf.d))
    delta.nprobe = ivf.nprobe
    joined = faiss.IndexShardsIVF(ivf.quantizer, ivf.nlist, False, True)
    for ix in group.indexes:
        joined.add_shard(ix)
    joined.add_shard(delta)
    table = np.concatenate([base[2][:-1], flat.global_ids, np.array([-1], np.int64)])
    return joined, base[1], table, delta


def search_delta(found, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, global ids, the rows of ``q`` short of min(k, rows) results) of ``delta_joined``'s
    search for combined queries [n, dim]; the short rows are the caller's to search again."""
    joined, params, table, _ = found
    kk = min(k, len(table) - 1)
    s, ids = joined.search(np.ascontiguousarray(q, np.float32), kk, params=params)
    return s, table[ids], (np.flatnonzero(ids[:, kk - 1] < 0) if kk else np.zeros(0, np.int64))


def flat_offsets(biases, flat: FlatGroup, modality: str) -> tuple[Optional[dict], dict]:
    """({method: the Flat rows' stored offsets} or None without offsets, {method: shift})."""
    if biases.section is None:
        return None, {}
    return ({m: flat.offsets([biases.per_shard(m, modality)[i] for i in flat.positions]) for m in EXTRA},
            {m: biases.shift(m, modality) for m in EXTRA})
