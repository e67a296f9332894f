"""Method quality on real CLIP geometry (../shared/data/embeddings): few-shot GDA vs zero-shot.

ImageNet (OpenAI ViT-B/32 features of 4 train images per class, the 80-template zero-shot
classifier): 4-fold cross-validation, 3 shots per class as support and the 4th as query.
CIFAR-10 (open_clip ViT-B-32 laion2b, 848 images, bare class-name text embeddings): 16 shots per
class as support, the rest as query, over --seeds random draws. Rows: zero-shot; the paper's
estimator (GDA, κ = 0) with α in hindsight (best on the queries: an upper bound the paper's
validation split approximates) and with α chosen by our cross-validation on the support; ours (text
prior on the class means, α and κ by cross-validation on the support). Example:

    python scripts/bench_quality.py --shared ../shared
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval import gda_classifier  # noqa: E402
from retrieval.methods.gda import ALPHAS  # noqa: E402


def imagenet(root: Path):
    d = root / "imagenet-vitb32-fewshot-zeroshot"
    X = np.load(d / "image_feats_4shot_vitb32.npy").astype(np.float32)
    y = np.load(d / "labels_4shot.npy")
    T = np.load(d / "zeroshot_classifier_vitb32.npy").astype(np.float32)
    for f in range(4):
        q = np.arange(len(X)) % 4 == f
        yield X[~q], y[~q], X[q], y[q], T


def cifar(root: Path, seeds: int):
    d = np.load(root / "cifar10-vitb32-laion2b-trainshard012" / "cifar10_train_shard012_numeric.npz")
    X, Tt, y = d["vision_emb"], d["text_emb"], d["label_ids"]
    T = np.stack([Tt[y == c][0] for c in range(10)])
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        sup = np.concatenate([rng.choice(np.flatnonzero(y == c), 16, replace=False) for c in range(10)])
        q = np.ones(len(y), bool)
        q[sup] = False
        yield X[sup], y[sup], X[q], y[q], T


def evaluate(splits) -> dict:
    rows: dict = {"zero-shot": [], "GDA, paper's estimator, best α in hindsight": [],
                  "GDA, paper's estimator, α by CV on the support": [], "GDA + text prior, α and κ by CV (ours)": []}
    for xs, ys, xq, yq, T in splits:
        rows["zero-shot"].append(((xq @ T.T).argmax(1) == yq).mean())
        rows["GDA, paper's estimator, best α in hindsight"].append(
            max((gda_classifier(xs, ys, T, alpha=a, kappa=0.0).predict(xq) == yq).mean() for a in ALPHAS))
        rows["GDA, paper's estimator, α by CV on the support"].append(
            (gda_classifier(xs, ys, T, kappa=0.0).predict(xq) == yq).mean())
        rows["GDA + text prior, α and κ by CV (ours)"].append((gda_classifier(xs, ys, T).predict(xq) == yq).mean())
    return {k: float(np.mean(v)) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--seeds", type=int, default=10, help="CIFAR-10 support draws")
    a = ap.parse_args()
    root = Path(a.shared) / "data" / "embeddings"
    inet, cif = evaluate(imagenet(root)), evaluate(cifar(root, a.seeds))
    print("| method | ImageNet, 3-shot (4-fold) | CIFAR-10, 16-shot |\n|---|---:|---:|")
    for k in inet:
        print(f"| {k} | {inet[k]:.4f} | {cif[k]:.4f} |")


if __name__ == "__main__":
    main()
