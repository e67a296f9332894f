"""`make demo`: build an index and run a few example searches.

With ../shared present (this project's fixtures) it indexes Flickr 1k with the tiny fixture CLIP.
Elsewhere pass --corpus: it uses open_clip ViT-B-32 laion2b weights from the hub.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval import Classifier, RetrievalError, build_index, format_info, index_info, load_model, open_index

QUERIES = ["a dog running on the grass", "children playing in the water", "a man riding a bicycle",
           "a snowy mountain", "people in a crowded street"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared", help="project fixtures folder (default ../shared)")
    ap.add_argument("--corpus", help="your own corpus (folder, manifest or tars); uses ViT-B-32 laion2b")
    ap.add_argument("--out", default="indexes/demo")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="laion2b_s34b_b79k")
    ap.add_argument("--k", type=int, default=3)
    a = ap.parse_args()
    shared = Path(a.shared)
    try:
        if a.corpus:
            clip = load_model(a.model, a.pretrained)
            kwargs: dict = {"corpus": a.corpus}
        elif (shared / "data" / "flickr8k_1k").is_dir():
            clip = load_model(str(shared / "models" / "tiny-clip-mix"))
            flickr = shared / "data" / "flickr8k_1k"
            kwargs = {"corpus": flickr / "captions.csv", "image_root": str(flickr / "images"), "shard_size": 300}
        else:
            print("demo: no ../shared fixtures here; run `make demo CORPUS=/path/to/corpus`", file=sys.stderr)
            return 2
        if (Path(a.out) / "manifest.json").exists():  # a demo index of an earlier version: rewrite it once
            from retrieval.ops.migrate import migrate

            report = migrate(a.out)
            if report.from_format != report.to_format:
                print(report.line())
        build_index(out=a.out, clip=clip, **kwargs)
        print(format_info(index_info(a.out)))
        index = open_index(a.out, clip)
        for q, results in zip(QUERIES, index.search_text(QUERIES, k=a.k)):
            print(f"\n> {q}")
            for r in results:
                print(f"  {r['score']:.3f}  {r['key']:<28}  {r['caption'][:70]}")
        q = QUERIES[0]
        print(f"\n> {q}  (rerank nnn, exact over the whole corpus)")
        for r in index.query(text=q, k=a.k, rerank="nnn")[0]:
            print(f"  {r['score']:.3f}  {r['key']:<28}  {r['caption'][:70]}")
        print(f"\n> {q}  (hybrid: CLIP fused with the keyword ranking of the same words; keywords alone: frisbee)")
        for r in index.search(q).hybrid().limit(a.k).to_list() + index.search().text_match("frisbee").limit(2).to_list():
            print(f"  {r['score']:.3f}  {r['key']:<28}  {r['caption'][:70]}")
        print(f"\n> more like {index.metadata([3])[0]['key']}, less like {index.metadata([11])[0]['key']}  (examples)")
        for r in index.search().like(3).unlike(11).limit(a.k).to_list():
            print(f"  {r['score']:.3f}  {r['key']:<28}  {r['caption'][:70]}")
        for q in ("a dog chasing a man", "a man chasing a dog"):
            print(f"\n> {q}  (rerank comclip: CLIP's top 10 by sub-image matching; regions computed now, "
                  "`retrieval regions` stores them)")
            for r in index.query(text=q, k=3, rerank="comclip")[0]:
                print(f"  {r['score']:.3f}  {r['key']:<28}  {r['caption'][:70]}")
        cifar = shared / "data" / "cifar10_test_1k"
        if not a.corpus and cifar.is_dir():
            classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
            paths = [cifar / c / "0000.jpg" for c in classes]
            print("\nX-MoRe classification of CIFAR-10 test photos with the Flickr index as caption bank:")
            for r in Classifier(index, classes).classify(paths):
                print(f"  {Path(r.path).parent.name:>10} -> {r.label:<10} (image top: {r.image_top[0][0]}, "
                      f"captions top: {r.caption_top[0][0]}, w_img {r.w_img:.2f}, w_cap {r.w_cap:.2f})")
        print(f"\nnext: `retrieval serve {a.out}` (or `make serve`) and open http://127.0.0.1:8000/")
    except RetrievalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
