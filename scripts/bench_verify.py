"""Integrity checks: the cost of `retrieval verify` (every byte, sha256) per GB, and of the cheap
check every open runs (sizes + sampled fingerprints, O(files)), measured in one run.

Builds an index folder from N random unit vectors (``build_from_embeddings``, IVF shards: combined
indexes and bias files), then times, --repeats times each:
- the full verify with a warm page cache, and with a cold one (``/proc/sys/vm/drop_caches``, root only);
- the quick check alone (what ``open_index`` adds), and ``open_index`` itself.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from synthetic import unit_vectors




def _drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--index-key", default="IVF256,Flat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="keep the index folder here (default: a temp folder)")
    a = ap.parse_args()

    from retrieval import build_from_embeddings, open_index
    from retrieval.store.integrity import quick_check, verify
    from retrieval.store.manifest import require_manifest

    tmp = Path(a.out or tempfile.mkdtemp(prefix="bench-verify-"))
    folder = tmp / "idx"
    if not (folder / "manifest.json").exists():
        x = unit_vectors(a.n, a.dim, 0, dtype=np.float16)
        t = time.perf_counter()
        build_from_embeddings(folder, x, x, {"arch": "synthetic"}, shard_size=-(-a.n // a.shards), index_key=a.index_key)
        print(f"built {a.n} x {a.dim} in {a.shards} shards ({a.index_key}) in {time.perf_counter() - t:.1f} s", flush=True)
    m = require_manifest(folder)
    res = verify(folder, m)
    assert res.ok, res.problems
    gib = res.bytes / 2**30
    times: dict[str, list[float]] = {"verify, warm cache": [], "verify, cold cache": [], "quick check (open adds)": [],
                                     "open_index": []}
    cold = True
    for _ in range(a.repeats):
        t = time.perf_counter()
        verify(folder, m)
        times["verify, warm cache"].append(time.perf_counter() - t)
        if cold and _drop_caches():
            t = time.perf_counter()
            verify(folder, m)
            times["verify, cold cache"].append(time.perf_counter() - t)
        else:
            cold = False
        t = time.perf_counter()
        quick_check(folder, m)
        times["quick check (open adds)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        open_index(folder)
        times["open_index"].append(time.perf_counter() - t)
    print(f"\n{res.files} files, {gib:.2f} GiB ({a.n} x {a.dim}, {a.shards} {a.index_key} shards), "
          f"median of {a.repeats}:")
    for name, v in times.items():
        if not v:
            print(f"  {name:<26} (needs root to drop the page cache)")
            continue
        med = statistics.median(v)
        rate = f"{gib / med:7.2f} GiB/s   {med / gib:6.2f} s per GiB" if name.startswith("verify") else ""
        print(f"  {name:<26} {med:8.3f} s   {rate}")
    q, o = statistics.median(times["quick check (open adds)"]), statistics.median(times["open_index"])
    print(f"  quick check / open_index        {q / o:.3f}")
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} cores")
    if a.out is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
