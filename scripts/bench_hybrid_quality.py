"""Text->image recall of keyword + CLIP fusion on the Flickr fixture (1,000 photos, 5 captions each).

Each photo is queried with its first caption (1,000 queries); the target is that photo. Two index
folders are built with the fixture model: in one ("held out") the keyword index holds only each
photo's other four captions, so the keyword side cannot find the query text itself; in the other
("kept") it holds all five (the literal-match case: a caption the user remembers). Methods: CLIP,
NNN, hybrid (RRF), hybrid (weighted, keyword weight 0.5 and 0.3) and hybrid + NNN; R@1 and R@5 each.
The fixture CLIP is tiny and trained on these photos: its numbers say nothing about a real CLIP.

    python scripts/bench_hybrid_quality.py [--shared ../shared]
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

METHODS = {"clip": {}, "nnn": {"rerank": "nnn"},
           "hybrid rrf": {"hybrid": True},
           "hybrid weighted 0.5": {"hybrid": True, "fusion": "weighted", "keyword_weight": 0.5},
           "hybrid weighted 0.3": {"hybrid": True, "fusion": "weighted", "keyword_weight": 0.3},
           "hybrid rrf + nnn": {"hybrid": True, "rerank": "nnn"}}


def photos(flickr: Path) -> dict[str, list[str]]:
    with open(flickr / "captions.csv", newline="") as f:
        out: dict[str, list[str]] = {}
        for r in csv.DictReader(f):
            out.setdefault(r["image"], []).append(r["caption"].strip())
    return out


def build(flickr: Path, model: Path, caps: dict, keep_query: bool, out: Path):
    from retrieval import build_index, load_model

    manifest = out.with_suffix(".csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for image, cs in caps.items():
            for c in (cs if keep_query else cs[1:]):
                w.writerow([image, c])
    clip = load_model(str(model), device="cpu")
    build_index(str(manifest), out, image_root=str(flickr / "images"), clip=clip, progress=False, workers=2,
                bias_bank="corpus")
    return clip


def recall(idx, clip, queries: list[str], targets: np.ndarray, kw: dict) -> tuple[float, float]:
    from retrieval.query.encode import encode_texts

    q = encode_texts(clip, queries)
    text_match = queries if kw.get("hybrid") else None
    opts = {k: v for k, v in kw.items() if k != "hybrid"}
    _, ids = idx.search(q, 5, text_match=text_match, **opts)
    return float((ids[:, 0] == targets).mean()), float((ids == targets[:, None]).any(1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(HERE.parent.parent / "shared"))
    a = ap.parse_args()
    from retrieval import open_index

    shared = Path(a.shared)
    flickr, model = shared / "data" / "flickr8k_1k", shared / "models" / "tiny-clip-mix"
    caps = photos(flickr)
    work = Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
    rows = {}
    for name, keep in (("held out", False), ("kept", True)):
        clip = build(flickr, model, caps, keep, work / name.replace(" ", "_"))
        idx = open_index(work / name.replace(" ", "_"), clip)
        key_to_id = {r["key"]: r["id"] for r in idx.metadata(idx.ids())}
        images = list(caps)
        targets = np.array([key_to_id[i] for i in images])
        queries = [caps[i][0] for i in images]
        rows[name] = {m: recall(idx, clip, queries, targets, kw) for m, kw in METHODS.items()}
    print("\nFlickr 1k, text->image, the first caption of each photo as the query (fixture model: tiny, trained on")
    print("these photos; not a real CLIP's numbers)")
    print(f"  {'method':<22}" + "".join(f"{n + ' R@1':>16}{n + ' R@5':>16}" for n in rows))
    for m in METHODS:
        print(f"  {m:<22}" + "".join(f"{rows[n][m][0]:>16.3f}{rows[n][m][1]:>16.3f}" for n in rows))


if __name__ == "__main__":
    main()
