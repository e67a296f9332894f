"""How many training vectors per IVF list the coarse quantizer needs: k-means time against the recall
the lists then give, on data with more clusters than lists (less friendly than bench_scale's).

For each --per-list value, an IVF{nlist} index (``store.faiss_index.new_index``, inner product) is
trained on that many sampled vectors per list (``store.keys.sample_ids``) and filled with all N;
reported: training seconds, and recall@10 against brute force at nprobe 1..64, with the smallest
nprobe that reaches 0.95 (the cost of a query is proportional to it). One process, one run:

    .venv/bin/python scripts/bench_train_sample.py --n 500000 --clusters 16384 --per-list 39,64,100
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import recall, unit_vectors  # noqa: E402

NPROBES = (1, 2, 4, 8, 16, 32, 64)


def main() -> None:
    import faiss

    from retrieval.store.faiss_index import new_index
    from retrieval.store.keys import ivf_centroids, sample_ids

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=16384, help="data centres (more than the lists)")
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--per-list", default="39,64,100")
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    x = unit_vectors(a.n, a.dim, 0, a.clusters, a.spread)
    q = unit_vectors(a.queries, a.dim, 1, a.clusters, a.spread)
    nlist = ivf_centroids(a.n)
    exact = faiss.IndexFlatIP(a.dim)
    exact.add(x)
    want = exact.search(q, 10)[1]
    del exact
    print(f"N = {a.n:,}, d = {a.dim}, {a.clusters:,} data clusters, IVF{nlist}")
    rows = []
    for per in (int(p) for p in a.per_list.split(",")):
        index = new_index(a.dim, f"IVF{nlist},Flat")
        sample = x[sample_ids(a.n, min(a.n, per * nlist), seed=0)]
        t = time.perf_counter()
        index.train(sample)
        took = time.perf_counter() - t
        index.add(x)
        got = {}
        for p in NPROBES:
            index.nprobe = p
            got[p] = recall(index.search(q, 10)[1], want)
        need = next((p for p in NPROBES if got[p] >= 0.95), None)
        rows.append((per, took, got, need))
        print(f"  {per:>4} per list ({len(sample):,} vectors): train {took:6.1f} s; recall@10 "
              + ", ".join(f"nprobe {p}: {r:.3f}" for p, r in got.items()) + f"; nprobe for 0.95: {need}")
    base = rows[-1]
    for per, took, got, need in rows[:-1]:
        print(f"  {per} vs {base[0]} per list: train time {took / base[1]:.2f}x, nprobe for 0.95 {need} vs {base[3]}")


if __name__ == "__main__":
    main()
