"""The coarse k-means in bf16 math vs faiss's own float32 k-means (one run, ratios).

``store.kmeans.coarse_centroids`` with ``precision="bf16"`` (faiss's contrib k-means loop, the
assignment product in bf16 on centroid-centred rows) against ``precision="fp32"`` (faiss's
``IVF{k},Flat`` training), on the same sample, for three seeds each (six on the small real set):

- seconds (median over the seeds) and the ratio;
- the k-means objective: the mean cosine of the sample's rows to their nearest centroid;
- the list-size imbalance of an ``IVF{k},Flat`` filled with the set's vectors (faiss's factor:
  1.0 when every list is as long);
- its recall@10 at nprobe 1, 2, 4, 8, 16 against exact search, with the vectors scanned per query
  (recall at equal cost is what matters: longer lists find more per probe and cost more); means
  over the seeds, the recall's spread over the seeds beside it.

The floor below which the engine trains in float32 whatever is asked (``BF16_MIN_WORK``) is set to 0
while this runs, so the small real set is measured in bf16 too.

Sets: ``clustered`` (N unit vectors around 256 centres, 1,024 lists, trained on the engine's
sample of 100 rows per list; 1,000 queries from the same distribution); ``clip-like`` (the same,
shifted along one shared direction until the rows' mean has norm ~0.8, as CLIP embeddings have);
``imagenet`` (real OpenAI ViT-B/32 embeddings of 4,000 ImageNet images from ../shared, 64 lists
trained on all of them; the 1,000 class prompts' text embeddings as queries: text-to-image).

``--parts builds``: the whole ``build_from_embeddings`` of N image + N text vectors (``IVF1024,Flat``,
biases included) with each k-means math (``RETRIEVAL_KMEANS_PRECISION``; torch imported before
either starts), its seconds (two builds each, in the order fp32, bf16, bf16, fp32), and the last
two folders served side by side (``bench_write_path._serving``: single-query QPS of clip and exact
BSAP, 5 interleaved rounds, recall@10 against brute force) at the nprobe each build's tuning chose.

    python scripts/bench_kmeans.py [--n 200000] [--shared ../shared] [--parts kmeans,builds]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from synthetic import recall, unit_vectors

NPROBES = (1, 2, 4, 8, 16)
SEEDS = (1234, 1, 2)
MORE_SEEDS = (1234, 1, 2, 3, 4, 5)   # the small real set: its seed-to-seed spread is wider


def clip_like(x: np.ndarray, seed: int) -> np.ndarray:
    """``x`` shifted along one random direction (rows renormalised): their mean gets norm ~0.8."""
    mu = np.random.default_rng(seed).standard_normal(x.shape[1]).astype(np.float32)
    y = 0.6 * x + 0.8 * mu / np.linalg.norm(mu)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def sets(n: int, shared: Path):
    """(name, training sample, vectors, queries, lists) per set."""
    from retrieval.store.keys import sample_ids, train_size

    x, q = unit_vectors(n, 512, 4, clusters=256, spread=0.5), unit_vectors(1000, 512, 9, clusters=256, spread=0.5)
    pick = sample_ids(n, train_size("IVF1024,Flat", n))
    yield "clustered", x[pick], x, q, 1024
    xc, qc = clip_like(x, 7), clip_like(q, 7)
    yield "clip-like", xc[pick], xc, qc, 1024
    d = shared / "data" / "embeddings" / "imagenet-vitb32-fewshot-zeroshot"
    if d.is_dir():
        img = np.load(d / "image_feats_4shot_vitb32.npy").astype(np.float32)
        txt = np.load(d / "zeroshot_classifier_vitb32.npy").astype(np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        yield "imagenet", img, img, txt, 64


def measure(sample, x, q, lists: int, precision: str, seed: int) -> dict:
    import faiss

    from retrieval.store.kmeans import coarse_centroids

    t = time.perf_counter()
    cent = coarse_centroids(sample, lists, precision, seed)
    took = time.perf_counter() - t
    quant = faiss.IndexFlatIP(x.shape[1])
    quant.add(cent)
    ivf = faiss.IndexIVFFlat(quant, x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    ivf.add(x)
    truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    rec, scanned = {}, {}
    for p in NPROBES:
        ivf.nprobe = p
        stats = faiss.cvar.indexIVF_stats
        stats.reset()
        rec[p] = recall(ivf.search(q, 10)[1], truth)
        scanned[p] = stats.ndis / len(q)
    objective = float(faiss.knn(sample, cent, 1, metric=faiss.METRIC_INNER_PRODUCT)[0].mean())
    sizes = np.array([ivf.get_list_size(i) for i in range(lists)], np.float64)
    imbalance = float((sizes ** 2).sum() * lists / sizes.sum() ** 2)
    return {"s": took, "objective": objective, "recall": rec, "scanned": scanned, "imbalance": imbalance}


def builds(n: int) -> None:
    import os
    import tempfile

    import torch  # noqa: F401  (imported before either clock starts: both builds find it loaded)
    from bench_write_path import _serving

    from retrieval import build_from_embeddings, open_index

    img, txt = unit_vectors(n, 512, 4, clusters=256, spread=0.5), unit_vectors(n, 512, 5, clusters=256, spread=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        folders, took = {}, {"fp32": [], "bf16": []}
        for math in ("fp32", "bf16", "bf16", "fp32"):   # ABBA: drift on a noisy machine cancels
            os.environ["RETRIEVAL_KMEANS_PRECISION"] = math
            folders[math] = Path(tmp) / f"{math}{len(took[math])}"
            t = time.perf_counter()
            build_from_embeddings(folders[math], img, txt, {"arch": "synthetic", "logit_scale": 100.0},
                                  shard_size=n, index_key="IVF1024,Flat")
            took[math].append(time.perf_counter() - t)
        os.environ.pop("RETRIEVAL_KMEANS_PRECISION")
        params = {m: open_index(f).shards[0]["index"]["image"]["params"] for m, f in folders.items()}
        served = _serving(folders, unit_vectors(1000, 512, 9, clusters=256, spread=0.5), 5)
    fp, bf = (sum(took[m]) / 2 for m in ("fp32", "bf16"))
    print(f"build_from_embeddings of {n} x 512 image + text, IVF1024,Flat (two builds each, ABBA): k-means fp32 "
          f"{fp:.1f} s ({took['fp32'][0]:.1f}, {took['fp32'][1]:.1f}), bf16 {bf:.1f} s ({took['bf16'][0]:.1f}, "
          f"{took['bf16'][1]:.1f}): {fp / bf:.2f}x")
    for math, r in served.items():
        print(f"  {math} (image index {params[math]}): " + "; ".join(
            f"{m} {r[m]['qps']:6.0f} QPS ({r[m]['ratio']:.2f}x) recall@10 {r[m]['recall']:.3f}" for m in ("clip", "bsap")))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--parts", default="kmeans,builds")
    a = ap.parse_args(argv)
    if "builds" in a.parts.split(","):
        builds(a.n)
    if "kmeans" not in a.parts.split(","):
        return
    from retrieval.store import kmeans
    from retrieval.store.bf16 import cpu_flags, native_bf16

    kmeans.BF16_MIN_WORK = 0
    print(f"CPU multiplies bf16 natively: {native_bf16(cpu_flags())}")
    for name, sample, x, q, lists in sets(a.n, a.shared):
        seeds = SEEDS if len(sample) > 10_000 else MORE_SEEDS
        got = {p: [measure(sample, x, q, lists, p, s) for s in seeds] for p in ("fp32", "bf16")}
        secs = {p: float(np.median([r["s"] for r in got[p]])) for p in got}
        print(f"{name}: {len(sample)} training rows -> {lists} lists, {len(x)} vectors, {len(q)} queries; "
              f"k-means fp32 {secs['fp32']:.2f} s, bf16 {secs['bf16']:.2f} s ({secs['fp32'] / secs['bf16']:.2f}x)")
        for p in ("fp32", "bf16"):
            obj = [r["objective"] for r in got[p]]
            cells = []
            for pr in NPROBES:
                vals = [r["recall"][pr] for r in got[p]]
                cells.append(f"np{pr} {np.mean(vals):.3f} ({min(vals):.3f}-{max(vals):.3f}) "
                             f"{np.mean([r['scanned'][pr] for r in got[p]]):.0f}")
            print(f"  {p}: objective {np.mean(obj):.5f} ({min(obj):.5f}-{max(obj):.5f}), imbalance "
                  f"{np.mean([r['imbalance'] for r in got[p]]):.2f}; recall@10 (spread) scanned/query: " + ", ".join(cells))


if __name__ == "__main__":
    main()
