"""Scale: the compressed-and-exact path under a whole-index memory budget, and the fp16 path's p50
as N grows (the scale issue), each step in its own process.

Data: N clustered unit vectors (512-d, --clusters seeded centres, noise --spread) as image
embeddings; --captioned of the rows also get a caption vector (the ``corpus`` bias bank samples
caption embeddings), the rest none: an image-only folder in practice. 1,000 held-out queries.

Per N and per path, a folder built by ``build_from_embeddings`` in shards of --shard-size:
- ``compressed``: no index key, ``memory_budget`` = --budget-per-vector x N bytes: the rule's key
  for the whole index (``store.keys``: IVF-PQ with the offsets in a sub-vector of their own), its
  candidates re-scored exactly from the memory-mapped fp16 vectors (``query.rescore``);
- ``fp16``: ``IVF{nlist},Flat`` with nlist from N (``store.keys.ivf_centroids``), stored as SQfp16;
- ``merged``: the fp16 folder (list ``fp16`` first) hard-linked into a folder of its own (a folder's
  files are only ever replaced, never written in place) and merged there (``retrieval merge``: one
  on-disk IVF per modality); its "build" is the merge.
Reported: build seconds, the key, disk (the fp16 vectors, the index files, the rest), open seconds,
RSS (anonymous and file-backed) after 1,000 queries per method, single-query p50 and p90 per method
(clip, exact BSAP, exact NNN at alpha 0.75), batch QPS, and recall@10 of each method against numpy
brute force over the folder's own stored vectors and stored offsets (computed in its own process).

    .venv/bin/python scripts/bench_scale.py --sizes 1000000 --paths compressed --work /tmp/bscale
    .venv/bin/python scripts/bench_scale.py --sizes 1000000,3000000 --paths fp16 --work /tmp/bscale
    .venv/bin/python scripts/bench_scale.py --sizes 1000000,3000000 --paths fp16,merged --work /tmp/bscale
    .venv/bin/python scripts/bench_scale.py --sizes 1000000 --paths compressed --work /tmp/bscale \
        --autofaiss-python /tmp/afvenv/bin/python

--autofaiss-python: also autofaiss (clip-retrieval's index builder) on the same vectors at the same
budget, in its own environment (scripts/peer_autofaiss.py says how to make it): its key, build,
single-query p50 and recall@10 (clip) beside ours, and its recall/p50 at wider nprobe.

--drop-caches starts every measurement on cold pages (Linux, as root); --warm-open opens the folder as
`retrieval serve` does (``open_index(warm=True)``: the search files asked for in the background).

A folder built by an earlier run with the same --work is reused (its build figures are printed again);
the measurements always run anew, so sizes compared in one run are measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import folder_bytes, status_mb, unit_vectors  # noqa: E402

METHODS = (("clip", {}), ("bsap", {"rerank": "bsap"}), ("nnn", {"rerank": "nnn", "alpha": 0.75}))


def data_dir(a, n: int) -> Path:
    return Path(a.work) / f"data_{n}"


def make_data(a, n: int) -> None:
    d = data_dir(a, n)
    if (d / "q.npy").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    # written straight to disk: 10M x 512 fp16 is 10 GB per array
    x = np.lib.format.open_memmap(d / "x.npy", "w+", np.float16, (n, a.dim))
    unit_vectors(n, a.dim, 0, a.clusters, a.spread, out=x)
    x.flush()
    t = np.lib.format.open_memmap(d / "t.npy", "w+", np.float16, (n, a.dim))   # zeros: no caption
    rows = np.sort(np.random.default_rng(3).choice(n, min(n, a.captioned), replace=False))
    t[rows] = unit_vectors(len(rows), a.dim, 2, a.clusters, a.spread, dtype=np.float16)
    t.flush()
    del x, t
    np.save(d / "q.npy", unit_vectors(a.queries, a.dim, 1, a.clusters, a.spread))


# ---- workers (own processes) ---------------------------------------------------------------------

def work_merge(a) -> dict:
    """The fp16 folder of the same N hard-linked into ``a.folder`` and merged there; its build figures
    with the merge's seconds, disk and index bytes."""
    from retrieval.ops.merge import merge

    folder = Path(a.folder)
    src = folder.with_name(folder.name.replace("merged_", "fp16_"))
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(src, folder, copy_function=os.link)
    shutil.copy(src.with_suffix(".exact.npz"), folder.with_suffix(".exact.npz"))   # the same vectors and ids
    report = merge(folder, ["image"])
    b = json.loads(src.with_suffix(".build.json").read_text())
    _, _, merged_bytes = report.merged["image"]
    return {**b, "build_s": report.seconds, "keys": [f"merged {k}" for k in b["keys"]],
            "disk_bytes": folder_bytes(folder), "index_bytes": merged_bytes, "shards": 1}


def work_build(a) -> dict:
    from retrieval import build_from_embeddings
    from retrieval.store.keys import ivf_centroids

    if a.path == "merged":
        return work_merge(a)

    x, t = np.load(Path(a.data) / "x.npy", mmap_mode="r"), np.load(Path(a.data) / "t.npy", mmap_mode="r")
    n = len(x)
    kw = ({"memory_budget": int(a.budget_per_vector * n)} if a.path == "compressed"
          else {"index_key": f"IVF{ivf_centroids(n)},Flat"})
    t0 = time.perf_counter()
    m = build_from_embeddings(a.folder, x, t, {"arch": "synthetic", "logit_scale": 100.0},
                              shard_size=a.shard_size, bias_bank="corpus", **kw)
    took = time.perf_counter() - t0
    folder = Path(a.folder)
    sizes = {"npy": 0, "index": 0}   # the image modality's current files (the text one is a small sample)
    for s in m["shards"]:
        for role, rel in s["files"].items():
            kind = {"img_emb": "npy", "image_index": "index"}.get(role)
            if kind:
                sizes[kind] += (folder / rel).stat().st_size
    keys = sorted({s["index"]["image"]["key"] for s in m["shards"] if "image" in s["index"]})
    params = sorted({s["index"]["image"]["params"] for s in m["shards"] if "image" in s["index"]})
    return {"build_s": took, "keys": keys, "params": params, "disk_bytes": folder_bytes(folder),
            "npy_bytes": sizes["npy"], "index_bytes": sizes["index"], "shards": len(m["shards"])}


def work_exact(a) -> dict:
    """Brute-force top-10 of each method over the folder's stored vectors and offsets."""
    from retrieval import open_index

    q = np.load(Path(a.data) / "q.npy")
    idx = open_index(a.folder, backend="faiss-cpu", warm=a.warm_open)
    n = len(idx)
    best = {m: (np.full((len(q), 10), -np.inf, np.float32), np.zeros((len(q), 10), np.int64)) for m, _ in METHODS}
    offsets = {m: (0.75 if m == "nnn" else 1.0) * idx.biases.all(m, "image") for m in ("bsap", "nnn")}
    for lo in range(0, n, 200_000):
        ids = np.arange(lo, min(n, lo + 200_000))
        s0 = q @ idx.embeddings(ids, "image").astype(np.float32).T
        for m, _ in METHODS:
            s = s0 - offsets[m][ids] if m in offsets else s0
            bs, bi = best[m]
            ss, ii = np.concatenate([bs, s], 1), np.concatenate([bi, np.broadcast_to(ids, s.shape)], 1)
            p = np.argpartition(-ss, 9, axis=1)[:, :10]
            best[m] = (np.take_along_axis(ss, p, 1), np.take_along_axis(ii, p, 1))
    np.savez(Path(a.folder).with_suffix(".exact.npz"), **{m: v[1] for m, v in best.items()})
    return {}


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist())]))


def work_measure(a) -> dict:
    import faiss  # noqa: F401 - imported before the RSS baseline

    from retrieval import open_index

    q = np.load(Path(a.data) / "q.npy")
    exact = dict(np.load(Path(a.folder).with_suffix(".exact.npz")))
    out: dict = {"rss_before_mb": status_mb()}
    t0 = time.perf_counter()
    idx = open_index(a.folder, backend="faiss-cpu", warm=a.warm_open)
    out["open_s"] = time.perf_counter() - t0
    for m, kw in METHODS:
        idx.search(q[:1], 10, **kw)
        lat, ids = [], []
        for i in range(len(q)):
            t = time.perf_counter()
            ids.append(idx.search(q[i:i + 1], 10, **kw)[1][0])
            lat.append(time.perf_counter() - t)
        out[m] = {"p50_ms": 1e3 * statistics.median(lat), "p90_ms": 1e3 * float(np.quantile(lat, 0.9)),
                  "recall": _recall(np.stack(ids), exact[m])}
        t = time.perf_counter()
        got = idx.search(q, 10, **kw)[1]
        out[m]["batch_qps"] = len(q) / (time.perf_counter() - t)
        out[m]["batch_recall"] = _recall(got, exact[m])
    out["rss_after_mb"] = status_mb()
    return out


WORKERS = {"build": work_build, "exact": work_exact, "measure": work_measure}


def run(kind: str, a, n: int, path: str) -> dict:
    folder = Path(a.work) / f"{path}_{n}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--folder", str(folder),
           "--data", str(data_dir(a, n)), "--path", path, "--shard-size", str(a.shard_size),
           "--budget-per-vector", str(a.budget_per_vector)] + (["--warm-open"] if a.warm_open else [])
    if kind == "measure" and a.drop_caches:   # every measure starts on cold pages (Linux, root)
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def peer(a, n: int) -> tuple[dict, dict]:
    """autofaiss's build (reused when an earlier run made it) and measurement, in its interpreter."""
    out = Path(a.work) / f"autofaiss_{n}"
    saved = out.with_suffix(".build.json")

    def step(name: str) -> dict:
        cmd = [a.autofaiss_python, str(HERE / "peer_autofaiss.py"), name, "--data", str(data_dir(a, n)),
               "--out", str(out), "--budget", str(a.budget_per_vector * n)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"autofaiss {name} failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    if not saved.exists():
        saved.write_text(json.dumps(step("build")))
    return json.loads(saved.read_text()), step("measure")


def report_peer(n: int, b: dict, m: dict, ours: Optional[dict]) -> None:
    mb = 1 / 2**20
    print(f"\nautofaiss, N = {n:,}: key {b['key']} ({m['params']}); build {b['build_s']:.0f} s; index file "
          f"{b['index_bytes'] * mb:,.0f} MB; RSS after the queries {m['rss_after_mb'].get('VmRSS', 0):,.0f} MB "
          f"(anonymous {m['rss_after_mb'].get('RssAnon', 0):,.0f})")
    print(f"  clip  p50 {m['p50_ms']:6.2f} ms, p90 {m['p90_ms']:6.2f} ms, recall@10 {m['recall']:.3f} "
          f"(batch {m['batch_qps']:,.0f} QPS, recall {m['batch_recall']:.3f})")
    for c in m["curve"]:
        print(f"  at {c['params']}: p50 {c['p50_ms']:6.2f} ms, recall@10 {c['recall']:.3f}")
    if ours is not None:
        r = ours["clip"]
        print(f"  ours (compressed) / autofaiss: recall@10 {r['recall']:.3f} / {m['recall']:.3f}, "
              f"p50 {r['p50_ms'] / m['p50_ms']:.2f}x")


def report(n: int, path: str, b: dict, m: dict) -> None:
    mb = 1 / 2**20
    print(f"\n{path}, N = {n:,}: key {', '.join(b['keys'])} ({', '.join(p or '-' for p in b['params'])}), "
          f"{b['shards']} shards; {'merge' if path == 'merged' else 'build'} {b['build_s']:.0f} s; disk {b['disk_bytes'] * mb:,.0f} MB "
          f"(image: fp16 npy {b['npy_bytes'] * mb:,.0f}, index files {b['index_bytes'] * mb:,.0f}); open {m['open_s']:.2f} s; "
          f"RSS after the queries {m['rss_after_mb'].get('VmRSS', 0):,.0f} MB "
          f"(anonymous {m['rss_after_mb'].get('RssAnon', 0):,.0f}, file {m['rss_after_mb'].get('RssFile', 0):,.0f})")
    for meth, _ in METHODS:
        r = m[meth]
        print(f"  {meth:<5} p50 {r['p50_ms']:6.2f} ms, p90 {r['p90_ms']:6.2f} ms, recall@10 {r['recall']:.3f} "
              f"(batch {r['batch_qps']:,.0f} QPS, recall {r['batch_recall']:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000")
    ap.add_argument("--paths", default="compressed,fp16")
    ap.add_argument("--work", default="/tmp/bench_scale")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=4096)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--captioned", type=int, default=20_000)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--budget-per-vector", type=float, default=160.0,
                    help="the compressed path's memory budget, bytes per vector (160: 160 MB at 1M)")
    ap.add_argument("--autofaiss-python", help="the interpreter of an environment with autofaiss (the peer)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before each measurement (Linux, as root): a cold start")
    ap.add_argument("--warm-open", action="store_true",
                    help="open with warm=True, as `retrieval serve` does (the search files read into the "
                         "page cache in the background while the queries run)")
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--folder")
    ap.add_argument("--data")
    ap.add_argument("--path")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return
    results = {}
    print(f"open_index(warm={a.warm_open}); page cache {'dropped before each measurement' if a.drop_caches else 'as found'}")
    for n in (int(s) for s in a.sizes.split(",")):
        make_data(a, n)
        for path in a.paths.split(","):
            saved = Path(a.work) / f"{path}_{n}.build.json"   # a folder built by an earlier run is reused
            if saved.exists():
                b = json.loads(saved.read_text())
            else:
                if path == "merged" and not (Path(a.work) / f"fp16_{n}.build.json").exists():
                    raise SystemExit("--paths merged merges the fp16 folder: list fp16 before merged")
                b = run("build", a, n, path)
                if path != "merged":   # a merged folder has the fp16 folder's vectors, ids and offsets
                    run("exact", a, n, path)
                saved.write_text(json.dumps(b))
            m = run("measure", a, n, path)
            report(n, path, b, m)
            results[(n, path)] = m
        if a.autofaiss_python:
            report_peer(n, *peer(a, n), results.get((n, "compressed")))
    for kind in ("fp16", "merged"):
        sized = sorted((n, m) for (n, p), m in results.items() if p == kind)
        if len(sized) >= 2:
            (n0, m0), (n1, m1) = sized[0], sized[-1]
            print(f"\n{kind} path, p50 at {n1:,} / p50 at {n0:,}: " + ", ".join(
                f"{meth} {m1[meth]['p50_ms'] / m0[meth]['p50_ms']:.2f}x" for meth, _ in METHODS))


if __name__ == "__main__":
    main()
