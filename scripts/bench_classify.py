"""Classification throughput: zero-shot CLIP vs X-MoRe (same images, same model), one run.

Times, per repeat and with the median reported:
- zero-shot: decode + preprocess + encode_image + class matmul/softmax;
- X-MoRe: the same, plus image->image retrieval of R neighbours, the stored caption embeddings
  and the caption softmaxes (``Classifier.classify``);
- the retrieval step alone (on precomputed image embeddings).
Defaults: the ../shared Flickr 1k index built with the tiny fixture CLIP, CIFAR-10 1k as queries.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--index", default=None, help="index folder (default: build Flickr 1k in a temp folder)")
    ap.add_argument("--labels", default=None, help="labels.csv of the images (default: CIFAR-10 1k)")
    ap.add_argument("--neighbours", type=int, default=128)
    ap.add_argument("--captions", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from retrieval import Classifier, build_index, load_model, open_index
    from retrieval.classify import read_labels

    shared = Path(a.shared)
    clip = load_model(str(shared / "models" / "tiny-clip-mix")) if a.index is None else None
    folder = a.index
    if folder is None:
        flickr = shared / "data" / "flickr8k_1k"
        folder = Path(tempfile.mkdtemp(prefix="bench-classify-")) / "idx"
        build_index(flickr / "captions.csv", folder, image_root=str(flickr / "images"), shard_size=300,
                    progress=False, clip=clip)
    paths, labels = read_labels(a.labels or shared / "data" / "cifar10_test_1k" / "labels.csv")
    clf = Classifier(open_index(folder, clip or "auto"), sorted(set(labels)), neighbours=a.neighbours, captions=a.captions)
    clf.classify(paths[:64], "xmore")  # warm-up

    times: dict[str, list[float]] = {"zero-shot CLIP": [], "X-MoRe": [], "retrieval step only": []}
    for _ in range(a.repeats):
        t = time.perf_counter()
        clf.classify(paths, "image", batch_size=a.batch_size)
        times["zero-shot CLIP"].append(time.perf_counter() - t)
        t = time.perf_counter()
        clf.classify(paths, "xmore", batch_size=a.batch_size)
        times["X-MoRe"].append(time.perf_counter() - t)
        x = np.concatenate([e for _, e in clf.embed_paths(paths[:512], a.batch_size)])
        t = time.perf_counter()
        clf.predict(x, "xmore")
        times["retrieval step only"].append((time.perf_counter() - t) * len(paths) / len(x))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(paths)} images, {len(clf.classes)} classes, index {len(clf.index)} rows, R={a.neighbours}, "
          f"K={a.captions}, median of {a.repeats}:")
    for k, v in med.items():
        print(f"  {k:<22} {len(paths) / v:10.1f} img/s   ({v:.2f} s)")
    print(f"  ratio X-MoRe / zero-shot throughput  {med['zero-shot CLIP'] / med['X-MoRe']:.3f}")


if __name__ == "__main__":
    main()
