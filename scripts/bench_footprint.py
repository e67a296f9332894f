"""Footprint of an index folder, this checkout vs a baseline commit, each side in its own processes.

N clustered unit vectors (512-d, --clusters seeded centres, noise --spread, as in bench_search.py) as
image and text embeddings, built with ``build_from_embeddings`` into --shards IVF{--nlist},Flat shards
with biases from a ``corpus`` bank. Per side it reports:
- the whole build from embeddings (shards, biases, indexes) in seconds, and the folder's bytes on disk;
- open: seconds, and RSS growth of the process (VmRSS after ``open_index`` minus before);
- RSS after 1,000 queries at nprobe 16, and after the nprobe 256 runs;
- per nprobe (1, 16, 256): single-query QPS (--single queries one by one) and batch QPS (--queries in
  one call; medians of --repeats after an untimed call), recall@10 against numpy brute force over the
  stored fp16 vectors, and recall of exact BSAP / NNN against brute force over the stored offsets;
- exact BSAP / NNN at nprobe = nlist: the fraction of queries whose top-10 equals brute force.
Ours also times ``retrieval bias`` (new offsets patched into the codes in place) against rebuilding
the same indexes from their decoded vectors (quantizer reused, and retrained). Brute force runs in
its own process per side, so the RSS figures hold only what a search holds.

The baseline runs from a git worktree of --baseline (``PYTHONPATH=<worktree>``); --no-baseline skips it.
The measurements run --rounds times per side, alternating sides, in fresh processes; every figure
is the median over the rounds, and the ratio column divides those medians.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from synthetic import baseline_tree, folder_bytes, status_mb, unit_vectors  # noqa: E402
NPROBES = (1, 16, 256)


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (VmRSS), or its anonymous part only (RssAnon: not file pages)."""
    return status_mb().get(field, float("nan"))


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / want.shape[1] for a, b in zip(got.tolist(), want.tolist())]))


# ---- workers: run with either side's code on sys.path --------------------------------------------

def work_build(a) -> dict:
    from retrieval import build_from_embeddings

    x, t = np.load(Path(a.data) / "x.npy"), np.load(Path(a.data) / "t.npy")
    t0 = time.perf_counter()
    build_from_embeddings(a.folder, x, t, {"arch": "synthetic", "logit_scale": 100.0}, shard_size=a.shard_size,
                          index_key=f"IVF{a.nlist},Flat", bias_bank="corpus")
    return {"build_s": time.perf_counter() - t0, "disk_bytes": folder_bytes(Path(a.folder))}


def _batch_qps(idx, q, repeats: int, **kw) -> tuple[float, np.ndarray]:
    ids = idx.search(q, 10, **kw)[1]  # untimed: steady state
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = idx.search(q, 10, **kw)[1]
        times.append(time.perf_counter() - t0)
    return len(q) / statistics.median(times), ids


def _single_qps(idx, q, repeats: int) -> float:
    idx.search(q[:1], 10)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(len(q)):
            idx.search(q[i:i + 1], 10)
        times.append(time.perf_counter() - t0)
    return len(q) / statistics.median(times)


def work_exact(a) -> dict:
    """Brute-force BSAP / NNN top-10 over the side's stored vectors and offsets (saved for ``measure``,
    so that its RSS figures hold no brute-force matrices)."""
    from retrieval import open_index

    q = np.load(Path(a.data) / "q.npy")
    idx = open_index(a.folder, backend="faiss-cpu")
    stored = idx.embeddings(np.arange(len(idx)), "image").astype(np.float32)
    out = {}
    for m, scale in (("bsap", 1.0), ("nnn", 0.75)):
        off = scale * idx.biases.all(m, "image")
        out[m] = np.concatenate([np.argsort(-(q[i:i + 100] @ stored.T - off), axis=1)[:, :10]
                                 for i in range(0, len(q), 100)])
    np.savez(Path(a.folder).with_suffix(".exact.npz"), **out)
    return {}


def work_measure(a) -> dict:
    import gc

    import faiss  # noqa: F401 - imported before the baseline RSS: both sides need it

    from retrieval import open_index

    q = np.load(Path(a.data) / "q.npy")
    truth = np.load(Path(a.data) / "truth.npy")
    exact = dict(np.load(Path(a.folder).with_suffix(".exact.npz")))
    out: dict = {"rss_imported_mb": rss_mb()}
    t0 = time.perf_counter()
    idx = open_index(a.folder, backend="faiss-cpu", search_params="nprobe=16")
    out["open_s"] = time.perf_counter() - t0
    out["rss_open_growth_mb"] = rss_mb() - out["rss_imported_mb"]
    idx.search(q, 10)
    out["rss_after_1000_queries_mb"], out["rss_anon_after_1000_queries_mb"] = rss_mb(), rss_mb("RssAnon")
    del idx
    gc.collect()
    for p in NPROBES + ((a.nlist,) if a.nlist not in NPROBES else ()):
        idx = open_index(a.folder, backend="faiss-cpu", search_params=f"nprobe={p}")
        row: dict = {}
        if p in NPROBES:
            row["batch_qps"], ids = _batch_qps(idx, q, a.repeats)
            row["single_qps"] = _single_qps(idx, q[:a.single], a.repeats)
            row["recall"] = recall(ids, truth)
        if p == 256:
            out["rss_after_nprobe256_mb"], out["rss_anon_after_nprobe256_mb"] = rss_mb(), rss_mb("RssAnon")
        for m in ("bsap", "nnn"):
            got = idx.search(q, 10, rerank=m, alpha=0.75)[1]
            row[f"{m}_recall"] = recall(got, exact[m])
            if p == a.nlist:
                row[f"{m}_equal"] = float(np.mean([set(g) == set(w) for g, w in zip(got.tolist(), exact[m].tolist())]))
        out[f"nprobe{p}"] = row
        del idx
        gc.collect()
    return out


def work_bias(a) -> dict:
    """``retrieval bias`` (patch in place) vs rebuilding the indexes from their decoded vectors."""
    import faiss

    from retrieval.ops.bias import compute_biases
    from retrieval.store.combined import combine_vectors, combined_layout
    from retrieval.store.faiss_index import build_faiss_index
    from retrieval.store.layout import bias_path
    from retrieval.store.manifest import require_manifest
    from retrieval.store.vectors import read_all

    section = compute_biases(a.folder, bank="corpus", seed=1)
    m = require_manifest(a.folder)
    trained = faiss.read_index(str(Path(a.folder) / m["trained"]["image"]["file"]))
    rebuild = {"reused_quantizer": 0.0, "retrained": 0.0}
    for s in m["shards"]:
        for mod in s["index"]:
            t0 = time.perf_counter()
            vecs = read_all(a.folder, s, mod)
            offsets = {meth: np.load(bias_path(a.folder, meth, mod, s["id"], section["dir"])) for meth in ("bsap", "nnn")}
            shifts = {meth: section["shift"][meth][mod] for meth in ("bsap", "nnn")}
            fkey, dim = combined_layout(s["index"][mod]["key"], vecs.shape[1])
            x = combine_vectors(vecs, offsets, shifts, dim)
            prep = time.perf_counter() - t0
            for kind in rebuild:
                t0 = time.perf_counter()
                ix = build_faiss_index(x, fkey, trained=trained if kind == "reused_quantizer" else None, extra=2)
                faiss.write_index(ix, str(Path(a.folder) / ".rebuild.tmp"))
                rebuild[kind] += prep + time.perf_counter() - t0
    os.unlink(Path(a.folder) / ".rebuild.tmp")
    return {"bias_total_s": section["seconds"], "bias_index_s": section["index_seconds"],
            **{f"bias_rebuild_{k}_s": v for k, v in rebuild.items()}}


WORKERS = {"build": work_build, "exact": work_exact, "measure": work_measure, "bias": work_bias}


# ---- driver ----------------------------------------------------------------------------------------

def run_worker(kind: str, a, folder: Path, code: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--folder", str(folder), "--data",
           str(a.data), "--nlist", str(a.nlist), "--shard-size", str(a.n // a.shards), "--repeats", str(a.repeats),
           "--single", str(a.single)]
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{kind} worker failed ({code}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_data(a) -> None:
    d = Path(a.data)
    if (d / "truth.npy").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    x = unit_vectors(a.n, a.dim, 0, a.clusters, a.spread).astype(np.float16)
    np.save(d / "x.npy", x)
    np.save(d / "t.npy", unit_vectors(a.n, a.dim, 2, a.clusters, a.spread).astype(np.float16))
    q = unit_vectors(a.queries, a.dim, 1, a.clusters, a.spread)
    np.save(d / "q.npy", q)
    s = np.empty((a.queries, 10), np.int64)
    for i in range(0, a.queries, 100):  # brute force over the stored fp16 values
        sc = q[i:i + 100] @ x.astype(np.float32).T if a.n <= 400_000 else _chunked(q[i:i + 100], x)
        s[i:i + 100] = np.argsort(-sc, axis=1)[:, :10]
    np.save(d / "truth.npy", s)


def _chunked(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.empty((len(q), len(x)), np.float32)
    for j in range(0, len(x), 200_000):
        out[:, j:j + 200_000] = q @ x[j:j + 200_000].astype(np.float32).T
    return out


def _median(runs: list[dict]) -> dict:
    """The median of every number across runs of the same worker (nested dicts too)."""
    out = {}
    for key, v in runs[0].items():
        out[key] = _median([r[key] for r in runs]) if isinstance(v, dict) else statistics.median(r[key] for r in runs)
    return out


def report(sides: dict, a) -> None:
    names = list(sides)
    print(f"\n{a.n} x {a.dim}, {a.shards} shards of IVF{a.nlist}; {a.queries} clustered queries, k=10")
    rows = [("disk (MB)", lambda s: s["disk_bytes"] / 1e6, "{:.0f}"),
            ("whole build from embeddings (s)", lambda s: s["build_s"], "{:.1f}"),
            ("open (s)", lambda s: s["open_s"], "{:.3f}"),
            ("RSS growth at open (MB)", lambda s: s["rss_open_growth_mb"], "{:.0f}"),
            ("RSS after 1,000 queries, nprobe 16 (MB)", lambda s: s["rss_after_1000_queries_mb"], "{:.0f}"),
            ("  of which anonymous (not file pages)", lambda s: s["rss_anon_after_1000_queries_mb"], "{:.0f}"),
            ("RSS after the nprobe 256 runs (MB)", lambda s: s["rss_after_nprobe256_mb"], "{:.0f}"),
            ("  of which anonymous (not file pages)", lambda s: s["rss_anon_after_nprobe256_mb"], "{:.0f}")]
    for p in NPROBES:
        for key, label in (("single_qps", "single-query QPS"), ("batch_qps", "batch QPS"), ("recall", "recall@10"),
                           ("bsap_recall", "exact BSAP recall"), ("nnn_recall", "exact NNN recall")):
            rows.append((f"nprobe {p}: {label}", lambda s, p=p, key=key: s[f"nprobe{p}"][key],
                         "{:.1f}" if "qps" in key else "{:.4f}"))
    for m in ("bsap", "nnn"):
        rows.append((f"nprobe {a.nlist}: {m.upper()} top-10 = brute force", lambda s, m=m: s[f"nprobe{a.nlist}"][f"{m}_equal"], "{:.3f}"))
    head = "| | " + " | ".join(names) + (" | ours / baseline |" if len(names) == 2 else " |")
    print(head)
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for label, get, fmt in rows:
        vals = [get(sides[n]) for n in names]
        ratio = f" | {vals[0] / vals[1]:.3f}" if len(vals) == 2 and vals[1] else (" | " if len(vals) == 2 else "")
        print(f"| {label} | " + " | ".join(fmt.format(v) for v in vals) + ratio + " |")
    if "bias_total_s" in sides["ours"]:
        b = sides["ours"]
        print(f"\n`retrieval bias` on ours: {b['bias_total_s']:.1f} s in all, of which {b['bias_index_s']:.1f} s writing "
              f"the new offsets into the indexes (coordinates patched in place in the codes). Rebuilding the same "
              f"indexes from their decoded vectors instead: {b['bias_rebuild_reused_quantizer_s']:.1f} s with the "
              f"quantizer reused, {b['bias_rebuild_retrained_s']:.1f} s retrained")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--clusters", type=int, default=4096)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="queries timed one by one")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="measure runs per side, alternating; medians reported")
    ap.add_argument("--baseline", default="da16967", help="commit to compare with (format 2: the issue's 'this commit')")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--work", default=None, help="working folder (default: a temp folder, removed)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--shard-size", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-footprint-"))
    a.data = str(work / "data")
    try:
        make_data(a)
        codes = {"ours": ROOT}
        if not a.no_baseline:
            codes["baseline"] = baseline_tree(ROOT, a.baseline, work / "baseline-code")
        sides, rounds = {}, {name: [] for name in codes}
        for name, code in codes.items():
            folder = work / f"idx-{name}"
            shutil.rmtree(folder, ignore_errors=True)
            sides[name] = run_worker("build", a, folder, code)
            run_worker("exact", a, folder, code)
        for r in range(a.rounds):  # the sides alternate; each figure is the median over the rounds
            for name, code in codes.items():
                rounds[name].append(run_worker("measure", a, work / f"idx-{name}", code))
                print(f"round {r + 1} {name}: {json.dumps(rounds[name][-1])}", file=sys.stderr)
        for name in codes:
            sides[name].update(_median(rounds[name]))
        sides["ours"].update(run_worker("bias", a, work / "idx-ours", ROOT))
        report(sides, a)
    finally:
        if not a.work:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline-code")],
                           capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
