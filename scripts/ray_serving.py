"""The serving half of ``bench_ray.py``: Ray fan-out vs in-process search, and a merged on-disk index
vs the shards, on N clustered unit vectors in --shards IVF shards (nprobe fixed), in one run.

1. the folder: ``build_from_embeddings`` (image only, no bias offsets), kept with --out;
2. RSS (private and file-backed) of a fresh process after open + one batch: shards read into RAM
   (``mmap=False``) and opened as by default (memory-mapped in faiss's in-memory layout);
3. latency p50 of one query and of a --batch batch, and QPS, in-process vs ``serve_on_ray`` with
   --groups shard groups x 1 replica on a local cluster (results compared: same ids);
4. ``retrieval merge`` of the folder (timed), then RSS of a fresh process over the merged index
   (memory-mapped .ivfdata) and its latency/QPS in-process (results compared with the shards').
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from synthetic import timed, unit_vectors

PROBE = """
import json, sys, numpy as np
sys.path.insert(0, sys.argv[5])
from synthetic import status_mb
from retrieval import open_index
base = status_mb()
idx = open_index(sys.argv[1], backend='faiss-cpu', search_params=sys.argv[2], mmap=json.loads(sys.argv[4]))
idx.search(np.load(sys.argv[3]), 10)
print(json.dumps({'before': base, 'after': status_mb()}))
"""


def probe_rss(folder: Path, params: str, q_file: Path, mmap=None) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, str(folder), params, str(q_file), json.dumps(mmap),
                        str(Path(__file__).resolve().parent)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def index_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of the shard index files, bytes of the merged index + .ivfdata) the manifest lists."""
    m = json.loads((folder / "manifest.json").read_text())
    shards = sum(s["bytes"].get("image_index", 0) for s in m["shards"])
    merged = sum(r["bytes"] for e in (m.get("merged") or {}).values() for r in e["files"].values())
    return shards, merged


def run(a) -> None:
    from retrieval import build_from_embeddings, open_index
    from retrieval.ops.merge import merge
    from retrieval.scale import serve_on_ray

    tmp = Path(a.out)
    folder = tmp / "idx"
    if not (folder / "manifest.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        x = unit_vectors(a.serve_n, a.dim, 0, 4096, 1.0).astype(np.float16)
        t = time.perf_counter()
        build_from_embeddings(folder, x, np.zeros_like(x), {"arch": "synthetic", "logit_scale": 100.0},
                              shard_size=-(-a.serve_n // a.shards), index_key=a.index_key, bias_bank=None)
        print(f"built {a.serve_n} x {a.dim} in {a.shards} shards ({a.index_key}) in {time.perf_counter() - t:.1f} s",
              flush=True)
        del x
    params = f"nprobe={a.nprobe}"
    q = unit_vectors(a.batch, a.dim, 1, 4096, 1.0)
    q_file = tmp / "q.npy"
    np.save(q_file, q)
    rss_ram, rss_shards = probe_rss(folder, params, q_file, mmap=False), probe_rss(folder, params, q_file)

    local = open_index(folder, backend="faiss-cpu", search_params=params)
    remote = open_index(folder, backend="faiss-cpu", search_params=params)
    pool = serve_on_ray(remote, groups=a.groups, replicas=1)
    try:
        same = np.array_equal(local.search(q, 10)[1], remote.search(q, 10)[1])
        rows = {}
        for name, idx in (("in-process", local), (f"ray {a.groups} groups", remote)):
            one = timed(lambda: idx.search(q[:1], 10), a.repeats * 20)
            batch = timed(lambda: idx.search(q, 10), a.repeats)
            rows[name] = (one, batch)
    finally:
        pool.close()
    t = time.perf_counter()
    report = merge(folder, ["image"])
    merge_s = time.perf_counter() - t
    merged = open_index(folder, backend="faiss-cpu", search_params=params)
    assert merged.shard_set.merged("image") is not None
    same_merged = np.array_equal(local.search(q, 10)[1], merged.search(q, 10)[1])
    rows["merged on disk"] = (timed(lambda: merged.search(q[:1], 10), a.repeats * 20),
                              timed(lambda: merged.search(q, 10), a.repeats))
    rss_merged = probe_rss(folder, params, q_file)
    shard_bytes, merged_bytes = index_bytes(folder)

    print(f"\n{a.serve_n} x {a.dim} fp16 in {a.shards} shards ({a.index_key}, {params}), k=10, "
          f"medians of {a.repeats} batches of {a.batch} / {a.repeats * 20} single queries")
    base_one, base_batch = rows["in-process"]
    for name, (one, batch) in rows.items():
        print(f"  {name:18s} 1 query p50 {1000 * one:7.2f} ms   batch {a.batch}: {1000 * batch:8.1f} ms = "
              f"{a.batch / batch:7.1f} QPS   ({batch / base_batch:.2f}x in-process time)")
    print(f"  same ids as in-process: ray {same}, merged {same_merged}")
    print(f"  merge: {report.line()} ({merge_s:.1f} s)")
    mib = 2 ** 20
    for name, r in (("shards read into RAM (mmap=False)", rss_ram), ("shards, default open (mmap)", rss_shards),
                    ("merged, memory-mapped", rss_merged)):
        grew = {k: r["after"][k] - r["before"][k] for k in ("RssAnon", "RssFile")}  # MiB
        print(f"  RSS growth after open + one batch, {name}: {grew['RssAnon']:.0f} MiB private + "
              f"{grew['RssFile']:.0f} MiB file pages (page cache, evictable)")
    print(f"  index files: shards {shard_bytes / mib:.0f} MiB, merged {merged_bytes / mib:.0f} MiB")
