"""Where a single query's time goes on a folder ``bench_scale.py`` built: the whole ``Index.search``,
faiss's joined search of the largest shard group, its coarse search alone (as served: the fp16 copy
re-scored, ``query.probe``; and the flat quantizer's), and the shards' ``search_preassigned`` looped
from Python (medians over the held-out queries, several passes: the first meets the lists' pages
unmapped). ``--graphs`` also serves the group through the flat quantizer and through HNSW graphs
over the same centroids (one per M/efConstruction/efSearch triple) and prints p50 and recall@10.

    .venv/bin/python scripts/query_parts.py --folder /tmp/bscale/fp16_3000000 --data /tmp/bscale/data_3000000 \\
        --graphs 32/40/32,32/80/64,32/80/128

A diagnostic: it reaches into the opened index's shard groups (``query.coarse.CoarseGroup``).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from bench_scale import METHODS, _recall as recall


def median_us(fn, n: int) -> float:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return 1e6 * statistics.median(lat)


def largest_group(idx):
    """The opened index's image shard group (``query.coarse.CoarseGroup``) with the most shards."""
    return max(idx._snap.shard_set.coarse_groups("image"), key=lambda g: len(g.positions))


def parts(idx, q: np.ndarray, passes: int) -> None:
    """The pieces of a plain-CLIP query, ``passes`` times over the same queries."""
    group = largest_group(idx)
    joined = group.joined()
    qa = np.zeros((len(q), joined.index.d), np.float32)
    qa[:, :q.shape[1]] = q   # the combined index's query for plain CLIP: zeros in the extra coordinates
    nprobe = joined.params.nprobe
    dq, iq = group.ivfs[0].quantizer.search(qa, nprobe)
    n = len(q)
    print(f"{len(group.ivfs)} shards, {group.ivfs[0].nlist} lists, nprobe {nprobe}, {n} queries (medians, µs)")
    for p in range(passes):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        loop = median_us(lambda i: [ix.search_preassigned(qa[i:i + 1], 10, iq[i:i + 1], dq[i:i + 1])
                                    for ix in group.ivfs], n)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        flat = median_us(lambda i: group.ivfs[0].quantizer.search(qa[i:i + 1], nprobe), n)
        probe = median_us(lambda i: joined.quantizer.search(qa[i:i + 1], nprobe), n)
        one = median_us(lambda i: joined.search(qa[i:i + 1], 10), n)
        whole = median_us(lambda i: idx.search(q[i:i + 1], 10), n)
        print(f"  pass {p}: Index.search {whole:.0f}; joined faiss search {one:.0f}; coarse search as served "
              f"({type(joined.quantizer).__name__}) {probe:.0f}, flat {flat:.0f}; "
              f"shards' search_preassigned from Python {loop:.0f} ({faults} minor page faults)")


def graphs(idx, q: np.ndarray, exact: dict, specs: list[str]) -> None:
    """p50 and recall@10 per method with the group's coarse quantizer swapped for HNSW graphs."""
    import faiss

    from retrieval.store.coarse import centroids

    group = largest_group(idx)
    joined = group.joined()
    cent = centroids(group.ivfs[0]).copy()
    served = joined.index.quantizer
    variants = {f"as served ({type(joined.quantizer).__name__})": served, "flat": group.ivfs[0].quantizer}
    for spec in specs:
        m, efc, efs = (int(v) for v in spec.split("/"))
        g = faiss.IndexHNSWFlat(cent.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        g.hnsw.efConstruction = efc
        t = time.perf_counter()
        g.add(cent)
        g.hnsw.efSearch = efs
        variants[f"HNSW{m} efC {efc} efS {efs} (built in {time.perf_counter() - t:.2f} s)"] = g
    try:
        for rnd in range(2):
            for label, quantizer in variants.items():
                joined.index.quantizer = quantizer
                row = []
                for meth, kw in METHODS:
                    ids = []
                    p50 = median_us(lambda i: ids.append(idx.search(q[i:i + 1], 10, **kw)[1][0]), len(q))
                    row.append(f"{meth} {p50 / 1e3:.3f} ms r@10 {recall(np.stack(ids), exact[meth]):.3f}")
                print(f"  round {rnd}, {label}: " + "; ".join(row), flush=True)
    finally:
        joined.index.quantizer = served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", required=True, help="a folder bench_scale.py built (fp16 path)")
    ap.add_argument("--data", required=True, help="its data folder (q.npy)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--graphs", default="", help="M/efConstruction/efSearch triples, comma-separated")
    a = ap.parse_args()
    from retrieval import open_index

    q = np.load(Path(a.data) / "q.npy")
    idx = open_index(a.folder, backend="faiss-cpu")
    parts(idx, q, a.passes)
    if a.graphs:
        exact = dict(np.load(Path(a.folder).with_suffix(".exact.npz")))
        graphs(idx, q, exact, a.graphs.split(","))


if __name__ == "__main__":
    main()
