"""Method quality on real CLIP geometry (../shared/data/embeddings): retrieval per rerank method, GDA.

Retrieval: each set becomes an index folder through our own build (``build_from_embeddings``,
corpus banks) and ``eval_retrieval`` measures R@1 per direction and method. ImageNet: the 4,000
image features, each captioned with its class's prompt-ensemble embedding, relevance by class label
(text→image = class prompts finding an image of the class; image→text = zero-shot accuracy).
Fashion: the 99 image/title pairs, relevance by pair. CIFAR-10: the 848 images captioned with their
bare class name, relevance by class.

Also: name-only GDA on a support set retrieved from an index over the other split
(``retrieved_table``), BSAP-H's λ chosen on one half of the pairs and measured on the other
(``calibration_check``), NNN's α (``nnn_alpha_table``) and BSAP's bank temperature (``bsap_tau_table``).

Few-shot GDA vs zero-shot:

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

from retrieval import build_from_embeddings, gda_classifier, open_index  # noqa: E402
from retrieval.classify import eval_retrieval  # noqa: E402
from retrieval.methods.gda import ALPHAS  # noqa: E402


def imagenet_arrays(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image features [4000, 512], labels [4000], the zero-shot classifier [1000, 512])."""
    d = root / "imagenet-vitb32-fewshot-zeroshot"
    return (np.load(d / "image_feats_4shot_vitb32.npy").astype(np.float32), np.load(d / "labels_4shot.npy"),
            np.load(d / "zeroshot_classifier_vitb32.npy").astype(np.float32))


def imagenet(root: Path):
    X, y, T = imagenet_arrays(root)
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


def retrieval_sets(root: Path):
    """(name, image emb, caption emb, labels or None) of every real-embedding set."""
    X, y, T = imagenet_arrays(root)
    yield "ImageNet ViT-B/32 (4,000, class prompts)", X, T[y], y
    d = root / "fashion-marqo-fashionclip-99pairs"
    img, txt = np.load(d / "image_embeddings.npy"), np.load(d / "text_embeddings.npy")
    yield "fashion pairs, Marqo-fashionCLIP (99)", img, txt, None
    z = np.load(root / "cifar10-vitb32-laion2b-trainshard012" / "cifar10_train_shard012_numeric.npz")
    yield "CIFAR-10 ViT-B-32 (848, bare names)", z["vision_emb"], z["text_emb"], z["label_ids"]


def set_folder(folder: Path, img: np.ndarray, txt: np.ndarray, y, bias_later: bool = False):
    """A real set as an index folder through our own build (unit rows, a ``label`` column where the
    set has labels, Flat, corpus banks); returns the unit rows (image, caption)."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    rows = [{"key": str(j), "image_path": "", "caption": "", **({"label": str(int(y[j]))} if y is not None else {})}
            for j in range(len(img))]
    build_from_embeddings(folder, img, txt, {"arch": "real-embeddings"}, rows, index_key="Flat", bias_bank="corpus",
                          bias_later=bias_later)
    return img, txt


def retrieval_table(root: Path, work: Path) -> list[str]:
    lines = ["| set | direction | clip | bsap | hybrid | nnn |", "|---|---|---:|---:|---:|---:|"]
    for i, (name, img, txt, y) in enumerate(retrieval_sets(root)):
        folder = work / f"set{i}"
        set_folder(folder, img, txt, y)
        res = eval_retrieval(open_index(folder), (1,), label_column="label" if y is not None else None)
        for direction in ("text→image", "image→text"):
            by = {r["method"]: r["R@1"] for r in res if r["direction"] == direction}
            lines.append(f"| {name} | {direction} | " + " | ".join(f"{by[m]:.3f}" for m in ("clip", "bsap", "hybrid", "nnn")) + " |")
    return lines


def precision_table(root: Path, work: Path) -> list[str]:
    """Offsets in fp32 vs bf16 math (``compute_biases(precision=...)``, corpus banks) on every real set:
    the largest and rms offset difference, R@1 per method and direction in each math, and how many of
    the whole-corpus top-10 ids (text→image, every caption as a query) the two agree on. These sets are
    smaller than ``BF16_MIN_ITEMS`` (below it a call runs fp32 whatever is asked): the table sets it
    to 0 while it runs, so bf16 is the math measured."""
    from retrieval.methods import offsets
    from retrieval.ops.bias import compute_biases

    floor, offsets.BF16_MIN_ITEMS = offsets.BF16_MIN_ITEMS, 0
    try:
        return _precision_rows(root, work, compute_biases)
    finally:
        offsets.BF16_MIN_ITEMS = floor


def _precision_rows(root: Path, work: Path, compute_biases) -> list[str]:

    lines = ["| set | offsets max / rms difference | direction | R@1 bsap fp32 / bf16 | R@1 hybrid fp32 / bf16 "
             "| R@1 nnn fp32 / bf16 | top-10 ids shared (bsap, nnn) |", "|---|---|---|---|---|---|---|"]
    for i, (name, img, txt, y) in enumerate(retrieval_sets(root)):
        folder = work / f"prec{i}"
        img, txt = set_folder(folder, img, txt, y, bias_later=True)
        got, offs, tops = {}, {}, {}
        for precision in ("fp32", "bf16"):
            sec = compute_biases(folder, bank="corpus", precision=precision)
            offs[precision] = np.concatenate([np.load(f) for f in sorted((folder / sec["dir"]).glob("[bn][sn]*_*_*.npy"))])
            idx = open_index(folder)
            for r in eval_retrieval(idx, (1,), label_column="label" if y is not None else None):
                got[precision, r["direction"], r["method"]] = r["R@1"]
            tops[precision] = [idx.search(txt, 10, rerank=m)[1] for m in ("bsap", "nnn")]
        d = offs["bf16"] - offs["fp32"]
        shared = [np.mean([len(set(a) & set(b)) / 10 for a, b in zip(tops["fp32"][j], tops["bf16"][j])]) for j in (0, 1)]
        for direction in ("text→image", "image→text"):
            lines.append(f"| {name} | {np.abs(d).max():.1e} / {np.sqrt(np.mean(d ** 2)):.1e} | {direction} | " + " | ".join(
                f"{got['fp32', direction, m]:.3f} / {got['bf16', direction, m]:.3f}" for m in ("bsap", "hybrid", "nnn"))
                + f" | {shared[0]:.4f}, {shared[1]:.4f} |")
    return lines


def bank_size_table(root: Path, work: Path, sizes=(1024, 2048, 4096), pairs=(250, 500, 1000),
                    seeds=(0, 1, 2)) -> list[str]:
    """R@1 on ImageNet (the one set with more than 2,048 items) per corpus-bank size (one sample as
    BSAP's bank and NNN's references, as builds store it) and calibration pairs (BSAP-H's λ), mean
    over ``seeds`` draws: what smaller banks and fewer pairs (the write path's flops) cost."""
    from retrieval.ops.bias import compute_biases

    name, img, txt, y = next(retrieval_sets(root))
    folder = work / "banks"
    set_folder(folder, img, txt, y, bias_later=True)
    methods = ("bsap", "hybrid", "nnn")
    lines = [f"| bank rows | calibration pairs | " + " | ".join(f"t→i {m}" for m in methods) + " | "
             + " | ".join(f"i→t {m}" for m in methods) + " |", "|---:|---:|" + "---:|" * 6]
    clip = None
    for size in sizes:
        for n_pairs in pairs:
            got: dict = {}
            for seed in seeds:
                compute_biases(folder, bank="corpus", bank_size=size, ref_size=size, seed=seed, calibrate=n_pairs)
                for r in eval_retrieval(open_index(folder), (1,), label_column="label"):
                    got.setdefault((r["direction"], r["method"]), []).append(r["R@1"])
            clip = {d: np.mean(got[d, "clip"]) for d in ("text→image", "image→text")}
            lines.append(f"| {size:,} | {n_pairs:,} | " + " | ".join(
                f"{np.mean(got[d, m]):.3f}" for d in ("text→image", "image→text") for m in methods) + " |")
    lines.append(f"| clip | | {clip['text→image']:.3f} | | | {clip['image→text']:.3f} | | |")
    return [f"{name}, mean over {len(seeds)} seeds:", ""] + lines


def calibration_check(root: Path) -> list[str]:
    """BSAP-H with λ chosen from the pairs, honestly: λ chosen on one half of the pairs, R@1 measured
    on the other half (and the reverse), over the whole corpus with corpus-bank offsets."""
    from retrieval.methods.calibrate import LAM_GRID, TopByLam, choose_lam, pair_hits
    from retrieval.methods.rerank import bsap_offsets
    from retrieval.ops.bias import BANK_TAU_SCALE

    lines = ["| set | direction | λ (half A, half B) | hybrid R@1, λ from the other half | clip | bsap |",
             "|---|---|---|---:|---:|---:|"]
    for name, img, txt, _ in retrieval_sets(root):
        img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
        txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
        n, rng = len(img), np.random.default_rng(0)
        half = rng.permutation(n)
        halves = (np.sort(half[: n // 2]), np.sort(half[n // 2:]))
        for direction, q, t, bank in (("text→image", txt, img, txt), ("image→text", img, txt, img)):
            c = bsap_offsets(t, bank[rng.choice(n, min(4096, n), replace=False)], BANK_TAU_SCALE * 100.0)
            top = TopByLam(q)
            top.add(t, c, np.arange(n))
            hits = pair_hits(np.arange(n), top.rows, lambda r: (img[r], txt[r]))
            lams = [choose_lam(hits[:, h])[0] for h in halves]
            g = [LAM_GRID.index(lam) for lam in lams]
            cv = (hits[g[0], halves[1]].sum() + hits[g[1], halves[0]].sum()) / n
            lines.append(f"| {name} | {direction} | {lams[0]}, {lams[1]} | {cv:.3f} | {hits[-1].mean():.3f} | "
                         f"{hits[0].mean():.3f} |")
    return lines


def directions(root: Path):
    """(set, direction, target items, a sample of up to 4,096 of the other modality, queries, their
    labels, the items' labels) for each set and direction; text→image: one query per distinct caption."""
    for name, img, txt, y in retrieval_sets(root):
        img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
        txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
        n, rng = len(img), np.random.default_rng(0)
        lab = y if y is not None else np.arange(n)
        first = np.unique(lab, return_index=True)[1]
        for direction, items, other, q, qlab in (("text→image", img, txt, txt[first], lab[first]),
                                                 ("image→text", txt, img, img, lab)):
            yield name, direction, items, other[rng.choice(n, min(4096, n), replace=False)], q, qlab, lab


def sweep_table(root: Path, head: list[str], ranking) -> list[str]:
    """R@1 per setting: ``ranking(items, sample, scores)`` -> one score matrix per setting; CLIP last."""
    lines = ["| set | direction | " + " | ".join(head) + " | clip |", "|---|---|" + "---:|" * (len(head) + 1)]
    for name, direction, items, sample, q, qlab, lab in directions(root):
        s = q @ items.T
        r1 = [(lab[h.argmax(1)] == qlab).mean() for h in (*ranking(items, sample, s), s)]
        lines.append(f"| {name} | {direction} | " + " | ".join(f"{v:.3f}" for v in r1) + " |")
    return lines


def nnn_alpha_table(root: Path, alphas=(0.25, 0.5, 0.75, 1.0, 1.25)) -> list[str]:
    """NNN R@1 per α (k = 16 over the sampled references)."""
    from retrieval.methods.rerank import DEFAULT_NNN_K, nnn_bias

    def ranking(items, refs, s):
        b = nnn_bias(items, refs, k=DEFAULT_NNN_K)
        return [s - a * b for a in alphas]
    return sweep_table(root, [f"α = {a}" for a in alphas], ranking)


def bsap_tau_table(root: Path, taus=(25.0, 50.0, 100.0, 200.0)) -> list[str]:
    """BSAP R@1 per bank temperature τ (the sampled bank); the model's logit scale is 100."""
    from retrieval.methods.rerank import bsap_offsets

    return sweep_table(root, [f"τ = {t:g}" for t in taus],
                       lambda items, bank, s: [s - bsap_offsets(items, bank, t) for t in taus])


def retrieved_splits(root: Path):
    """(set, fold, index images, their labels, their captions, query images, query labels, class prompts)."""
    X, y, T = imagenet_arrays(root)
    for f in range(4):
        q = np.arange(len(X)) % 4 == f
        yield "ImageNet", f, X[~q], y[~q], T[y[~q]], X[q], y[q], T
    z = np.load(root / "cifar10-vitb32-laion2b-trainshard012" / "cifar10_train_shard012_numeric.npz")
    X, Tt, y = z["vision_emb"], z["text_emb"], z["label_ids"]
    for f in range(2):
        q = np.arange(len(X)) % 2 == f
        yield "CIFAR-10", f, X[~q], y[~q], Tt[~q], X[q], y[q], np.stack([Tt[y == c][0] for c in range(10)])


def retrieved_table(root: Path, work: Path, ms=(4, 8, 16)) -> list[str]:
    """Name-only support retrieved from an index (``retrieved_support`` + GDA) vs zero-shot."""
    from retrieval.classify.fewshot import RETRIEVED_ALPHA, RETRIEVED_KAPPA, retrieved_support

    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    acc: dict = {}
    for name, f, xi, yi, ci, xq, yq, T in retrieved_splits(root):
        xi, ci, xq, T = unit(xi), unit(ci), unit(xq), unit(T)
        folder = work / f"{name}{f}"
        rows = [{"key": str(j), "image_path": "", "caption": ""} for j in range(len(xi))]
        build_from_embeddings(folder, xi, ci, {"arch": "real-embeddings"}, rows, index_key="Flat", bias_bank="corpus")
        idx = open_index(folder)
        acc.setdefault((name, "zero-shot"), []).append(((xq @ T.T).argmax(1) == yq).mean())
        for m in ms:
            for rerank in ("clip", "nnn"):
                sup = retrieved_support(idx, T, m, rerank)
                clf = gda_classifier(sup.emb, sup.labels, T, alpha=RETRIEVED_ALPHA, kappa=RETRIEVED_KAPPA)
                acc.setdefault((name, f"GDA on the top {m} per prompt, {rerank}"), []).append((clf.predict(xq) == yq).mean())
                acc.setdefault((name, f"pseudo-label purity, top {m}, {rerank}"), []).append((yi[sup.ids] == sup.labels).mean())
    sets = ("ImageNet", "CIFAR-10")
    lines = ["| method | ImageNet (index: the other 3,000 images) | CIFAR-10 (index: the other half) |",
             "|---|---:|---:|"]
    for key in dict.fromkeys(k for _, k in acc):
        lines.append(f"| {key} | " + " | ".join(f"{np.mean(acc[s, key]):.4f}" if (s, key) in acc else "" for s in sets) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--seeds", type=int, default=10, help="CIFAR-10 support draws")
    ap.add_argument("--tables", default="all", help="'all', or 'banks' / 'precision' for that table alone")
    a = ap.parse_args()
    root = Path(a.shared) / "data" / "embeddings"
    import tempfile

    if a.tables in ("banks", "precision"):
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join((bank_size_table if a.tables == "banks" else precision_table)(root, Path(tmp))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(retrieval_table(root, Path(tmp))) + "\n")
        print("\n".join(retrieved_table(root, Path(tmp))) + "\n")
    print("\n".join(calibration_check(root)) + "\n")
    print("\n".join(nnn_alpha_table(root)) + "\n")
    print("\n".join(bsap_tau_table(root)) + "\n")
    inet, cif = evaluate(imagenet(root)), evaluate(cifar(root, a.seeds))
    print("| method | ImageNet, 3-shot (4-fold) | CIFAR-10, 16-shot |\n|---|---:|---:|")
    for k in inet:
        print(f"| {k} | {inet[k]:.4f} | {cif[k]:.4f} |")


if __name__ == "__main__":
    main()
