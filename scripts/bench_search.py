"""Query-layer speed on synthetic normalised vectors, measured in one run (median of --repeats).

Builds an index folder from N random unit vectors (``build_from_embeddings``) in --shards shards,
then times batched queries (--queries random unit vectors, k=--k):
- raw faiss: the same index files read with faiss.read_index, searched shard by shard, merged with numpy;
- ours: ``Index.search`` (faiss-cpu backend; shards searched in threads, merged top-k);
- ours exact BSAP / NNN: whole-corpus search with the stored per-item offsets;
- ours hybrid: BSAP-H rerank of --candidates CLIP candidates;
- torch exact (CPU here; the GPU path on CUDA).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--index-key", default="Flat")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="keep the index folder here (default: a temp folder)")
    ap.add_argument("--skip-exact", action="store_true",
                    help="skip exact BSAP/NNN and torch runs (brute force over N on non-Flat shards: slow on CPU)")
    a = ap.parse_args()

    import faiss

    from retrieval.build import build_from_embeddings
    from retrieval.search import open_index

    tmp = Path(a.out or tempfile.mkdtemp(prefix="bench-search-"))
    folder = tmp / "idx"
    if not (folder / "manifest.json").exists():
        x = _unit(a.n, a.dim, 0).astype(np.float16)
        t = time.perf_counter()
        build_from_embeddings(folder, x, x, {"arch": "synthetic", "logit_scale": 100.0},
                              shard_size=-(-a.n // a.shards), index_key=a.index_key)
        print(f"built {a.n} x {a.dim} in {a.shards} shards ({a.index_key}) in {time.perf_counter() - t:.1f} s", flush=True)
    idx = open_index(folder, backend="faiss-cpu")
    q = _unit(a.queries, a.dim, 1)
    raw = [faiss.read_index(str(folder / s["files"]["image_index"])) for s in idx.shards]
    for ix, s in zip(raw, idx.shards):
        if s["index"]["image"]["params"]:
            faiss.ParameterSpace().set_index_parameters(ix, s["index"]["image"]["params"])
    offs = idx.offsets

    def raw_faiss():
        parts = [ix.search(q, a.k) for ix in raw]
        sc = np.concatenate([p[0] for p in parts], 1)
        ids = np.concatenate([p[1] + o for p, o in zip(parts, offs)], 1)
        top = np.argsort(-sc, 1)[:, :a.k]
        return np.take_along_axis(sc, top, 1), np.take_along_axis(ids, top, 1)

    torch_idx = None if a.skip_exact else open_index(folder, backend="torch")
    runs = {
        "raw faiss": raw_faiss,
        "ours clip": lambda: idx.search(q, a.k),
        "ours exact bsap": lambda: idx.search(q, a.k, rerank="bsap"),
        "ours exact nnn": lambda: idx.search(q, a.k, rerank="nnn"),
        f"ours hybrid ({a.candidates} cand.)": lambda: idx.search(q, a.k, rerank="hybrid", candidates=a.candidates),
        f"ours clip, k={a.candidates}": lambda: idx.search(q, a.candidates),
        "torch exact (cpu)": lambda: torch_idx.search(q, a.k),
    }
    if a.skip_exact:
        for name in ("ours exact bsap", "ours exact nnn", "torch exact (cpu)"):
            runs.pop(name)
    for f in runs.values():  # warm-up (page cache, lazy loads)
        f()
    assert np.array_equal(np.sort(runs["raw faiss"]()[1], 1), np.sort(runs["ours clip"]()[1], 1))
    res: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(a.repeats):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            res[name].append(a.queries / (time.perf_counter() - t))
            print(f"  {name:<28} {res[name][-1]:10.1f} QPS", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\n{a.n} x {a.dim} synthetic unit vectors, {a.shards} shards, {a.index_key}, {a.queries} queries per batch, "
          f"k={a.k}, median of {a.repeats} (QPS):")
    for name, v in med.items():
        print(f"  {name:<28} {v:10.1f}")
    print(f"  ratio ours / raw faiss            {med['ours clip'] / med['raw faiss']:.3f}")
    for m in ("bsap", "nnn"):
        if f"ours exact {m}" in med:
            print(f"  time exact {m} / plain           {med['ours clip'] / med[f'ours exact {m}']:.3f}")
    hyb = [k for k in med if k.startswith("ours hybrid")][0]
    base = [k for k in med if k.startswith("ours clip, k=")][0]
    print(f"  time hybrid / plain top-{a.candidates}        {med[base] / med[hyb]:.3f}")
    if a.out is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
