"""ComCLIP vs CLIP: ComVG pairwise accuracy (overall and per changed slot), a synthetic compositional
set built from CIFAR-10 photos, and per-query latency of a top-10 rerank.

- ``comvg``: ComCLIP's own benchmark (5,400 rows over 524 Visual Genome photos; ../shared/data/comvg):
  for each sentence, is the positive image scored above the negative one that changes the subject,
  the verb or the object? CLIP (cosine) vs ComCLIP with the built-in parser, and with ComVG's own
  triplets as the parse (an oracle for the text side: what an LLM parse gives at best). Regions:
  selective-search proposals (``--max-boxes``).
- ``synthetic``: two CIFAR-10 test photos side by side (classes A and B); the query "a A next to a B";
  the positive collage (A, B) against hard negatives holding one class twice (A, A') and (B', B).
  Regions: proposals, and the two halves given as boxes (a perfect region detector).
- ``latency``: seconds per text query for CLIP's top 10 reranked, on the Flickr fixture's photos:
  regions computed at query time (selective search + one forward per box) vs regions given (the
  boxes and their embeddings precomputed: only the parts' texts and the predicate overlays are
  encoded); with the fixture model, and with ``--latency-model`` (ViT-B-32 random weights by default).
Any open_clip model runs it (``--model ViT-B-32 --pretrained openai`` reproduces the paper's setting
where weights can be had). With the fixture model (``tiny-clip-mix``, trained on the fixture photos)
the accuracies only show the pipeline runs: they say nothing about a real CLIP.

    python scripts/bench_comclip.py [--shared ../shared] [--parts comvg,synthetic,latency] [--limit N]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

SLOTS = ("subject", "verb", "object")


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def comvg_rows(comvg: Path, limit: int | None = None) -> list[dict]:
    with open(comvg / "ComVG.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[:limit] if limit else rows


def triplet_parse(triplet: str):
    """ComVG's positive triplet "man,sit,table" as a parse (subject, verb, object; no attributes)."""
    from retrieval.methods.parse import Entity, Parse, Relation

    s, v, o = (x.strip() for x in triplet.split(","))
    return Parse((Entity(s), Entity(o)), (Relation(s, v, o),))


def comvg(clip, shared: Path, limit: int | None, max_boxes: int, weighting: str) -> dict:
    """Accuracy of CLIP, ComCLIP (built-in parser) and ComCLIP (ComVG's triplets), overall and per slot."""
    from retrieval.corpus.images import decode_image
    from retrieval.query.comclip import ComclipOptions, ComclipScorer

    root = shared / "data" / "comvg"
    rows = comvg_rows(root, limit)
    by_sentence: dict[str, set] = defaultdict(set)
    for r in rows:
        by_sentence[r["sentence"]] |= {r["pos_image_id"], r["neg_image_id"]}
    images = {i: decode_image(str(root / "images" / f"{i}.jpg"))[0] for s in by_sentence.values() for i in s}
    t0 = time.perf_counter()
    plain = ComclipScorer(clip, ComclipOptions(weighting, max_boxes=max_boxes))
    ids = sorted(images)
    regions = {}
    for i in range(0, len(ids), 32):
        regions.update(zip(ids[i:i + 32], plain.regions([images[j] for j in ids[i:i + 32]])))
    t_regions = time.perf_counter() - t0
    oracle = ComclipScorer(clip, ComclipOptions(weighting, max_boxes=max_boxes, parses={
        r["sentence"]: triplet_parse(r["pos_triplet"]) for r in rows}))
    scores: dict[str, dict] = {"clip": {}, "comclip": {}, "comclip, ComVG's triplets": {}}
    t0 = time.perf_counter()
    for sentence, img_ids in by_sentence.items():
        img_ids = sorted(img_ids)
        t = plain.encoder.texts([sentence])[0]
        clip_s = np.array([unit(regions[i].whole) @ t for i in img_ids])
        ims, regs = [lambda i=i: images[i] for i in img_ids], [regions[i] for i in img_ids]
        for name, s in (("clip", clip_s), ("comclip", plain.scores(sentence, t, ims, regs, clip_s)),
                        ("comclip, ComVG's triplets", oracle.scores(sentence, t, ims, regs, clip_s))):
            scores[name].update({(sentence, i): v for i, v in zip(img_ids, s)})
    t_score = time.perf_counter() - t0
    out = {}
    for name, sc in scores.items():
        hits = defaultdict(list)
        for r in rows:
            ok = sc[(r["sentence"], r["pos_image_id"])] > sc[(r["sentence"], r["neg_image_id"])]
            hits["all"].append(ok)
            hits[r["neg_value"]].append(ok)
        out[name] = {k: (float(np.mean(v)), len(v)) for k, v in hits.items()}
    print(f"ComVG: {len(rows)} rows, {len(by_sentence)} sentences, {len(images)} images; regions {t_regions:.1f} s, "
          f"scoring {t_score:.1f} s")
    print(f"{'method':<28}" + "".join(f"{k:>16}" for k in ("all",) + SLOTS))
    for name, acc in out.items():
        print(f"{name:<28}" + "".join(f"{acc[k][0]:>9.3f} ({acc[k][1]:>4})" if k in acc else f"{'-':>16}"
                                      for k in ("all",) + SLOTS))
    return out


def collage(a, b, side: int = 224):
    """Two square photos side by side, centred on a grey square canvas of ``side`` pixels."""
    from PIL import Image

    half = side // 2
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    canvas.paste(a.convert("RGB").resize((half, half)), (0, side // 4))
    canvas.paste(b.convert("RGB").resize((half, half)), (half, side // 4))
    return canvas


def synthetic(clip, shared: Path, n: int, max_boxes: int, weighting: str, seed: int = 0) -> dict:
    """Pairwise accuracy on CIFAR-10 collages: (A, B) vs (A, A') and vs (B', B) for "a A next to a B"."""
    from PIL import Image

    from retrieval.query.comclip import ComclipOptions, ComclipScorer

    root = shared / "data" / "cifar10_test_1k"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = {c: sorted((root / c).glob("*.jpg")) for c in classes}
    rng = np.random.default_rng(seed)
    scorer = ComclipScorer(clip, ComclipOptions(weighting, max_boxes=max_boxes))
    halves = [(0, 56, 112, 168), (112, 56, 224, 168)]
    hits = defaultdict(list)
    for _ in range(n):
        a, b = rng.choice(len(classes), 2, replace=False)
        ca, cb = classes[a], classes[b]
        pick = lambda c: Image.open(files[c][rng.integers(len(files[c]))])  # noqa: E731
        pa, pa2, pb, pb2 = pick(ca), pick(ca), pick(cb), pick(cb)
        ims = [collage(pa, pb), collage(pa, pa2), collage(pb2, pb)]
        text = f"a {ca} next to a {cb}"
        t = scorer.encoder.texts([text])[0]
        for label, given in (("proposals", None), ("the two halves as boxes", [halves] * 3)):
            regs = scorer.regions(ims, given or ())
            clip_s = np.array([unit(r.whole) @ t for r in regs])
            com = scorer.scores(text, t, [lambda im=im: im for im in ims], regs, clip_s)
            if label == "proposals":
                hits["clip"] += [clip_s[0] > clip_s[1], clip_s[0] > clip_s[2]]
            hits[f"comclip, {label}"] += [com[0] > com[1], com[0] > com[2]]
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    print(f"Synthetic CIFAR-10 collages: {n} queries, {2 * n} pairs (positive vs one class twice)")
    for k, v in out.items():
        print(f"  {k:<36} {v:.3f}")
    out["recognition"] = recognition(scorer, classes, files, halves[0], rng)
    return out


def recognition(scorer, classes: list, files: dict, box, rng, per_class: int = 30) -> dict:
    """Why ComCLIP can or cannot help here: zero-shot accuracy ("a photo of a C", 10 classes, chance
    0.1) of the photo alone, of its tile cropped from a collage, and of the collage with everything
    but that tile painted black (the sub-image ComCLIP scores)."""
    from PIL import Image

    from retrieval.corpus.subimages import black_outside

    text = unit(scorer.encoder.texts([f"a photo of a {c}" for c in classes]))
    hits = defaultdict(list)
    for ci, c in enumerate(classes):
        photos = [Image.open(f).convert("RGB") for f in files[c][:per_class]]
        other = classes[(ci + 1) % len(classes)]
        cols = [collage(p, Image.open(files[other][rng.integers(len(files[other]))])) for p in photos]
        for name, ims in (("photo alone", photos), ("tile cropped from the collage", [x.crop(box) for x in cols]),
                          ("collage masked to the tile (ComCLIP)", [black_outside(x, box) for x in cols])):
            hits[name] += list((unit(scorer.encode(ims)) @ text.T).argmax(1) == ci)
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    print("  zero-shot accuracy of the model on the tiles (10 classes, chance 0.10):")
    for k, v in out.items():
        print(f"    {k:<38} {v:.3f}")
    return out


def latency(clip, shared: Path, queries: list[str], max_boxes: int, repeats: int, label: str) -> dict:
    """Median seconds per query: 10 candidates (Flickr fixture photos) reranked, regions at query time
    vs precomputed (what a stored-regions index reads)."""
    from retrieval.corpus.images import decode_image
    from retrieval.query.comclip import ComclipOptions, ComclipScorer

    paths = sorted((shared / "data" / "flickr8k_1k" / "images").glob("*.jpg"))
    scorer = ComclipScorer(clip, ComclipOptions(max_boxes=max_boxes))
    rng = np.random.default_rng(0)
    fresh, stored = [], []
    for r in range(repeats):
        text = queries[r % len(queries)]
        cands = [paths[i] for i in rng.choice(len(paths), 10, replace=False)]
        t0 = time.perf_counter()
        t = scorer.encoder.texts([text])[0]
        ims = [decode_image(str(p))[0] for p in cands]
        regs = scorer.regions(ims)
        scorer.scores(text, t, [lambda im=im: im for im in ims], regs, np.zeros(10))
        fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()             # stored regions: an image is read only to draw an overlay
        t = scorer.encoder.texts([text])[0]
        scorer.scores(text, t, [lambda p=p: decode_image(str(p))[0] for p in cands], regs, np.zeros(10))
        stored.append(time.perf_counter() - t0)
    out = {"regions at query time": statistics.median(fresh), "regions precomputed": statistics.median(stored)}
    print(f"Latency, {label}: top-10 rerank, median of {repeats} queries, {max_boxes} boxes per image")
    for k, v in out.items():
        print(f"  {k:<24} {v:.3f} s per query")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--model", default=None, help="open_clip architecture or local checkpoint folder "
                                                  "(default: the fixture model)")
    ap.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file")
    ap.add_argument("--parts", default="comvg,synthetic,latency")
    ap.add_argument("--limit", type=int, default=None, help="ComVG: only the first N rows")
    ap.add_argument("--synthetic", type=int, default=200, help="synthetic queries")
    ap.add_argument("--max-boxes", type=int, default=16)
    ap.add_argument("--weighting", default="sum", choices=("sum", "softmax"))
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--latency-model", default="ViT-B-32", help="a second model timed with random weights ('' : none)")
    args = ap.parse_args(argv)
    from retrieval import load_model

    model = args.model or str(args.shared / "models" / "tiny-clip-mix")
    clip = load_model(model, args.pretrained, device="cpu") if args.pretrained else load_model(model, device="cpu")
    parts = set(args.parts.split(","))
    print(f"model: {model} {args.pretrained or ''}; weighting {args.weighting}")
    if "comvg" in parts:
        comvg(clip, args.shared, args.limit, args.max_boxes, args.weighting)
    if "synthetic" in parts:
        synthetic(clip, args.shared, args.synthetic, args.max_boxes, args.weighting)
    if "latency" in parts:
        queries = ["a dog chasing a man", "a child in a pink dress climbing stairs", "two men playing football",
                   "a woman riding a bike next to a car"]
        latency(clip, args.shared, queries, args.max_boxes, args.repeats, Path(model).name)
        if args.latency_model:
            rand = load_model(args.latency_model, None, device="cpu")
            latency(rand, args.shared, queries, args.max_boxes, args.repeats, f"{args.latency_model} (random weights)")


if __name__ == "__main__":
    main()
