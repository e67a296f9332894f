"""Living-index operations on N synthetic vectors in IVF shards, measured in one run:

- the initial build from embeddings (vectors/s, shards + biases), then append --append vectors
  (``add_embeddings``: new shards on the trained quantizer, offsets from the stored banks);
- delete --delete keys (one manifest write), then tombstone 10 % in all;
- batch search QPS with 10 % tombstoned vs 0 % (same queries, same nprobe);
- filtered search (``where``) at 1 %, 10 % and 50 % selectivity vs unfiltered: QPS and recall@10
  against brute force over the live, matching rows;
- compaction of the tombstoned shards.
Vectors and queries are drawn around --clusters centres (the generator of bench_search.py).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from synthetic import recall, unit_vectors






def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--index-key", default="IVF1024,Flat")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--append", type=int, default=10_000)
    ap.add_argument("--delete", type=int, default=2_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clusters", type=int, default=4096)
    ap.add_argument("--spread", type=float, default=1.0)
    a = ap.parse_args()

    from retrieval import add_embeddings, build_from_embeddings, compact, open_index

    tmp = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    folder = tmp / "idx"
    total = a.n + a.append
    x = unit_vectors(total, a.dim, 0, a.clusters, a.spread)
    rows = [{"key": f"k{i}", "image_path": "", "caption": "", "bucket": i % 100} for i in range(total)]
    t = time.perf_counter()
    build_from_embeddings(folder, x[:a.n], x[:a.n], {"arch": "synthetic"}, rows[:a.n],
                          shard_size=-(-a.n // a.shards), index_key=a.index_key)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    rep = add_embeddings(folder, x[a.n:], x[a.n:], rows[a.n:])
    t_append = time.perf_counter() - t
    assert rep.added == a.append
    params = f"nprobe={a.nprobe}"
    q = unit_vectors(a.queries, a.dim, 1, a.clusters, a.spread)

    def qps(idx, **kw) -> float:
        idx.search(q, 10, **kw)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            idx.search(q, 10, **kw)
            times.append(time.perf_counter() - t0)
        return a.queries / statistics.median(times)

    idx = open_index(folder, search_params=params)
    qps_0 = qps(idx)
    rng = np.random.default_rng(2)
    order = rng.permutation(total)
    t = time.perf_counter()
    idx.delete([f"k{i}" for i in order[:a.delete]])
    t_delete = time.perf_counter() - t
    idx.delete([f"k{i}" for i in order[a.delete:total // 10]])
    idx = open_index(folder, search_params=params)
    qps_10 = qps(idx)
    live = np.zeros(total, bool)
    live[idx.ids()] = True
    stored = idx.embeddings(np.arange(total), "image")
    res = {}
    for name, where, match in (("1 %", "bucket = 0", np.arange(total) % 100 == 0),
                               ("10 %", "bucket < 10", np.arange(total) % 100 < 10),
                               ("50 %", "bucket < 50", np.arange(total) % 100 < 50)):
        ok = live & match
        got = idx.search(q, 10, where=where)[1]
        brute = np.argsort(-np.where(ok, q @ stored.T, -np.inf), axis=1)[:, :10]
        res[name] = (qps(idx, where=where), recall(got, brute))
    brute = np.argsort(-np.where(live, q @ stored.T, -np.inf), axis=1)[:, :10]
    plain_recall = recall(idx.search(q, 10)[1], brute)
    t = time.perf_counter()
    crep = compact(folder, threshold=0.05)
    t_compact = time.perf_counter() - t
    idx = open_index(folder, search_params=params)
    assert len(idx) == total - total // 10

    print(f"\n{a.n} x {a.dim} clustered vectors, {a.shards} shards {a.index_key}, nprobe {a.nprobe}, "
          f"{a.queries} queries per batch, k=10, median of {a.repeats}:")
    print(f"  initial build (shards + biases)       {t_build:8.1f} s   {a.n / t_build:9.0f} vectors/s")
    print(f"  append {a.append} vectors               {t_append:8.1f} s   {a.append / t_append:9.0f} vectors/s "
          f"({(a.append / t_append) / (a.n / t_build):.2f} x the initial build's rate)")
    print(f"  delete {a.delete} keys (one write)       {t_delete:8.2f} s")
    print(f"  search, 0 % tombstoned                {qps_0:8.1f} QPS")
    print(f"  search, 10 % tombstoned               {qps_10:8.1f} QPS   ratio {qps_10 / qps_0:.3f}  "
          f"(recall@10 vs brute force over live rows {plain_recall:.3f})")
    for name, (v, r) in res.items():
        print(f"  filter keeping {name:<5}                {v:8.1f} QPS   ratio {v / qps_10:.3f} vs unfiltered, "
              f"recall@10 {r:.3f}")
    print(f"  compact ({crep.rows_reclaimed} rows reclaimed, {crep.rewritten_shards} shards rewritten) "
          f"{t_compact:8.1f} s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
