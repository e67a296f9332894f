"""Query-layer speed on synthetic normalised vectors, measured in one run (median of --repeats).

Builds an index folder from N random unit vectors (``build_from_embeddings``) in --shards shards,
then times batched queries (--queries random unit vectors, k=--k):
- raw faiss: each shard's index file read into RAM with faiss.read_index (a Flat shard: an
  IndexFlatIP over its npy), searched shard by shard, merged with numpy;
- ours: ``Index.search`` (faiss-cpu backend; shards searched in threads, merged top-k);
- ours exact BSAP / NNN: whole-corpus search with the stored per-item offsets;
- ours hybrid: BSAP-H rerank of --candidates CLIP candidates;
- torch exact (CPU here; the GPU path on CUDA);
- recall@k of plain and exact BSAP/NNN results against numpy brute force (--recall-queries).
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
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--index-key", default="Flat")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="keep the index folder here (default: a temp folder)")
    ap.add_argument("--clusters", type=int, default=0,
                    help="draw corpus and queries around this many random centres (0: isotropic random vectors)")
    ap.add_argument("--spread", type=float, default=1.0, help="noise scale around the centres (with --clusters)")
    ap.add_argument("--nprobe", type=int, default=None,
                    help="IVF: search with this nprobe (both sides) instead of the build's tuned value")
    ap.add_argument("--skip-exact", action="store_true", help="skip the exact BSAP/NNN runs")
    ap.add_argument("--skip-torch", action="store_true", help="skip the torch exact run (brute force: slow at 1M on CPU)")
    ap.add_argument("--recall-queries", type=int, default=100,
                    help="queries whose top-k is checked against numpy brute force (plain, BSAP, NNN)")
    a = ap.parse_args()


    from retrieval import build_from_embeddings, open_index

    tmp = Path(a.out or tempfile.mkdtemp(prefix="bench-search-"))
    folder = tmp / "idx"
    if not (folder / "manifest.json").exists():
        x = unit_vectors(a.n, a.dim, 0, a.clusters, a.spread).astype(np.float16)
        t = time.perf_counter()
        build_from_embeddings(folder, x, x, {"arch": "synthetic", "logit_scale": 100.0},
                              shard_size=-(-a.n // a.shards), index_key=a.index_key)
        print(f"built {a.n} x {a.dim} in {a.shards} shards ({a.index_key}) in {time.perf_counter() - t:.1f} s", flush=True)
    params = f"nprobe={a.nprobe}" if a.nprobe is not None else None
    idx = open_index(folder, backend="faiss-cpu", search_params=params)
    q = unit_vectors(a.queries, a.dim, 1, a.clusters, a.spread)
    raw = [_raw_index(folder, s, params) for s in idx.shards]
    offs = idx.offsets

    def raw_faiss():
        parts = [ix.search(_pad(q, ix.d), a.k) for ix in raw]
        sc = np.concatenate([p[0] for p in parts], 1)
        ids = np.concatenate([p[1] + o for p, o in zip(parts, offs)], 1)
        top = np.argsort(-sc, 1)[:, :a.k]
        return np.take_along_axis(sc, top, 1), np.take_along_axis(ids, top, 1)

    torch_idx = None if a.skip_torch else open_index(folder, backend="torch", search_params=params)
    runs = {
        "raw faiss": raw_faiss,
        "ours clip": lambda: idx.search(q, a.k),
        "ours exact bsap": lambda: idx.search(q, a.k, rerank="bsap"),
        "ours exact nnn": lambda: idx.search(q, a.k, rerank="nnn"),
        f"ours hybrid ({a.candidates} cand.)": lambda: idx.search(q, a.k, rerank="hybrid", candidates=a.candidates),
        f"ours clip, k={a.candidates}": lambda: idx.search(q, a.candidates),
        "torch exact (cpu)": lambda: torch_idx.search(q, a.k),
    }
    for name in (("ours exact bsap", "ours exact nnn") if a.skip_exact else ()) + (("torch exact (cpu)",) if a.skip_torch else ()):
        runs.pop(name)
    for f in runs.values():  # warm-up (page cache, lazy loads)
        f()
    assert np.array_equal(np.sort(runs["raw faiss"]()[1], 1), np.sort(runs["ours clip"]()[1], 1))
    res: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(a.repeats):
        for name, f in runs.items():
            f()  # untimed call first: each run is timed in its own steady state (allocator, caches)
            t = time.perf_counter()
            f()
            res[name].append(a.queries / (time.perf_counter() - t))
            print(f"  {name:<28} {res[name][-1]:10.1f} QPS", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    recalls = _recalls(idx, q[:a.recall_queries], a.k, a.skip_exact) if a.recall_queries else {}
    print(f"\n{a.n} x {a.dim} synthetic unit vectors, {a.shards} shards, {a.index_key}, {a.queries} queries per batch, "
          f"k={a.k}, median of {a.repeats} (QPS):")
    for name, v in med.items():
        print(f"  {name:<28} {v:10.1f}")
    # ratios per repeat (both sides timed back to back), then their median: robust to machine noise
    def ratio(num: str, den: str) -> float:
        return statistics.median(res[num][i] / res[den][i] for i in range(a.repeats))

    print(f"  ratio ours / raw faiss            {ratio('ours clip', 'raw faiss'):.3f}   (median of per-repeat ratios)")
    for m in ("bsap", "nnn"):
        if f"ours exact {m}" in med:
            print(f"  time exact {m} / plain           {ratio('ours clip', f'ours exact {m}'):.3f}")
    for name, r in recalls.items():
        print(f"  recall@{a.k} {name:<22} {r:.3f}")
    hyb = [k for k in med if k.startswith("ours hybrid")][0]
    base = [k for k in med if k.startswith("ours clip, k=")][0]
    print(f"  time hybrid / plain top-{a.candidates}        {ratio(base, hyb):.3f}")
    if a.out is None:
        shutil.rmtree(tmp, ignore_errors=True)


def _raw_index(folder: Path, shard: dict, params):
    """What a faiss user would search for one shard: its index file read into RAM (IVF/HNSW: the
    combined index with the coarse centroids the shards share, queried with zeros in the offsets
    coordinates), or an IndexFlatIP over its npy."""
    import faiss

    from retrieval.store.coarse import read_index

    if "image_index" not in shard["files"]:
        ix = faiss.IndexFlatIP(shard["dim"])
        ix.add(np.load(folder / shard["files"]["img_emb"]).astype(np.float32))
        return ix
    ix = read_index(folder, shard["files"]["image_index"], shard["index"]["image"])  # + the shared centroids
    if params or shard["index"]["image"]["params"]:
        faiss.ParameterSpace().set_index_parameters(ix, params or shard["index"]["image"]["params"])
    return ix


def _pad(q: np.ndarray, d: int) -> np.ndarray:
    return q if q.shape[1] == d else np.hstack([q, np.zeros((len(q), d - q.shape[1]), np.float32)])


def _recalls(idx, q: np.ndarray, k: int, skip_exact: bool) -> dict[str, float]:
    """recall@k of our results against numpy brute force over the stored fp16 vectors."""
    x = idx.embeddings(np.arange(len(idx)), "image")  # the stored fp16 vectors, in global id order

    def brute(offsets: np.ndarray) -> np.ndarray:
        s = q @ x.T - offsets
        return np.argpartition(-s, k - 1, axis=1)[:, :k]

    out = {"plain vs exact cosine": recall(idx.search(q, k)[1], brute(np.zeros(len(x), np.float32)))}
    if not skip_exact:
        out["bsap vs brute force"] = recall(idx.search(q, k, rerank="bsap")[1], brute(idx.biases.all("bsap", "image")))
        out["nnn vs brute force"] = recall(idx.search(q, k, rerank="nnn")[1], brute(0.75 * idx.biases.all("nnn", "image")))
    return out


if __name__ == "__main__":
    main()
