"""The small shards (appends) joined, in memory, to the IVF shards' one search.

Without a filter, the IVF shards sharing the folder's quantizer are one search of their stacked
lists (``query.coarse``, ``query.stacked``); the small Flat shards were a second scan and a merge (``query.flat_group``:
~50 µs a query on top of ~170 µs). Here their rows are added, in memory, to one more IVF index on the
same quantizer (fp16 codes of the combined vectors, the stored offsets in the extra coordinates, as
the shards hold them) that joins the group: one search, and those rows are found through the lists
like any appended shard's once ``compact`` merges them (the tuned nprobe's recall, no longer an
exact scan). The group's small IVF shards (appends of up to 10,000 rows) have their lists copied
into it as well: faiss's joined search pays per sub-index, so five appended shards cost 0.74-0.81x
of the built folder's QPS, against 0.93-0.96x for the same rows compacted (measured). At most
65,536 rows in all; made on first use, per snapshot of shards and offsets.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..store.combined import EXTRA, combine_vectors
from ..store.vectors import fp16_vector_codes
from .coarse import CoarseGroup, one_index
from .flat_group import MAX_ROWS, SMALL_ROWS, FlatGroup


def folded(rows: list[int], flat_rows: int) -> list[int]:
    """Which of a group's shards (``rows`` each, in order) join the in-memory index beside
    ``flat_rows`` Flat rows (pure): those of at most SMALL_ROWS rows, in order, while the total stays
    within MAX_ROWS."""
    out, total = [], flat_rows
    for j, n in enumerate(rows):
        if n <= SMALL_ROWS and total + n <= MAX_ROWS:
            out.append(j)
            total += n
    return out


def delta_joined(group: CoarseGroup, flat: Optional[FlatGroup], offsets: Optional[dict], shifts: dict):
    """(``group``'s large shards and one in-memory IVF index of the Flat rows and the group's small
    shards, searched as one (``coarse.one_index``: ``search(q, k)`` -> global ids), the in-memory
    index), or None when that would not save a sub-search (no Flat rows and fewer than two small
    shards) or the shards do not qualify (their nprobe differ, their codes are not fp16 vectors).
    ``offsets``: {method: [Flat rows]} (None: zeros); ``shifts``: {method: s}."""
    import faiss

    base = group.joined()
    ivf = group.ivfs[0]
    if base is None or not fp16_vector_codes(ivf):
        return None
    small = folded([x.ntotal for x in group.ivfs], 0 if flat is None else len(flat.global_ids))
    if flat is None and len(small) < 2:
        return None
    delta = faiss.IndexIVFScalarQuantizer(ivf.quantizer, ivf.d, ivf.nlist, faiss.ScalarQuantizer.QT_fp16,
                                          ivf.metric_type, False)
    delta.is_trained = True   # the quantizer is trained, and fp16 codes need no training
    ids = []
    if flat is not None:
        delta.add(combine_vectors(flat.vectors, offsets, shifts, ivf.d))
        ids.append(flat.global_ids)
    for j in small:           # a small shard's lists are copied as they are: same quantizer, same lists
        _copy_lists(group.ivfs[j], delta)
        ids.append(np.arange(group.ivfs[j].ntotal, dtype=np.int64) + group.starts[j])
    delta.nprobe = ivf.nprobe
    large = [j for j in range(len(group.indexes)) if j not in small]
    joined = one_index([group.ivfs[j] for j in large] + [delta],
                       [int(group.starts[j]) for j in large] + [np.concatenate(ids)], ivf.nprobe, group.coarse)
    return joined, delta


def _copy_lists(src, dst) -> None:
    """Append every list of IVF ``src`` to the same list of ``dst`` (equal quantizer and code size),
    ids numbered after ``dst``'s rows."""
    import faiss

    inv, first = src.invlists, dst.ntotal
    for lst in range(src.nlist):
        n = inv.list_size(lst)
        if n:
            codes = np.array(faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size))
            ids = faiss.rev_swig_ptr(inv.get_ids(lst), n) + first
            dst.invlists.add_entries(lst, n, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    dst.ntotal = first + src.ntotal


def search_delta(found, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, global ids, the rows of ``q`` short of min(k, rows) results) of ``delta_joined``'s
    search for combined queries [n, dim]; the short rows are the caller's to search again."""
    joined, _ = found
    kk = min(k, joined.rows)
    s, ids = joined.search(np.ascontiguousarray(q, np.float32), kk)
    return s, ids, (np.flatnonzero(ids[:, kk - 1] < 0) if kk else np.zeros(0, np.int64))


def flat_offsets(biases, flat: FlatGroup, modality: str) -> tuple[Optional[dict], dict]:
    """({method: the Flat rows' stored offsets} or None without offsets, {method: shift})."""
    if biases.section is None:
        return None, {}
    return ({m: flat.offsets([biases.per_shard(m, modality)[i] for i in flat.positions]) for m in EXTRA},
            {m: biases.shift(m, modality) for m in EXTRA})
