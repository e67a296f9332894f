"""Build throughput vs the bare model forward, measured in one run (DESIGN §7: build is bounded by
``encode_image``).

Same model (open_clip ViT-B-32, random init: speed does not depend on the weights), same photos, same
batch size. Timed alternately, ``--repeats`` times each; medians and their ratio are printed:
- bare image: ``model.encode_image`` on batches preprocessed beforehand (the ceiling for images/s);
- bare image+text: ``encode_image`` + open_clip's own ``encode_text`` (full 77-token context) on the
  same batches: what a build that embeds both must compute without our trimmed text path;
- bare image+trimmed text: ``encode_image`` + our exact cut-context text path (retrieval/text_fast.py):
  the least any build embedding both must compute; build / this = the pipeline's own efficiency;
- build: ``retrieval.build_index`` end to end (read, decode, preprocess, tokenize, both encoders,
  shard files, faiss indexes, manifest), model already loaded.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--n", type=int, default=256, help="photos per run")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    import torch
    from PIL import Image

    from retrieval import build_index, load_model
    from retrieval.embed import Encoder

    flickr = Path(a.shared) / "data" / "flickr8k_1k"
    clip = load_model(a.model, a.pretrained, device=a.device)
    enc = Encoder(clip)
    full_text = Encoder(clip, trim_text=False)
    from retrieval import open_corpus

    first = {e.key: e.caption for e in open_corpus(flickr / "captions.csv", image_root=str(flickr / "images")).entries()}  # first caption per photo
    names = list(first)[: a.n]
    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    with open(tmp / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([(n, first[n]) for n in names])
    batches = [names[i:i + a.batch_size] for i in range(0, len(names), a.batch_size)]
    pix = [torch.stack([clip.preprocess(Image.open(flickr / "images" / n).convert("RGB")) for n in b]) for b in batches]
    tok = [clip.tokenizer([first[n] for n in b]) for b in batches]
    enc.images(pix[0][:2])  # warm-up
    enc.tokens(tok[0][:2])

    def bare(text_encoder) -> float:
        t = time.perf_counter()
        for p, tk in zip(pix, tok):
            enc.images(p)
            if text_encoder is not None:
                text_encoder.tokens(tk)
        return len(names) / (time.perf_counter() - t)

    def build() -> float:
        out = tmp / "idx"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        build_index(tmp / "m.csv", out, clip=clip, image_root=str(flickr / "images"), batch_size=a.batch_size,
                    workers=a.workers, progress=False, shard_size=max(1, a.n // 2))
        return len(names) / (time.perf_counter() - t)

    res: dict[str, list[float]] = {"bare_image": [], "bare_image_text": [], "bare_image_trimmed_text": [], "build": []}
    for r in range(a.repeats):
        res["bare_image"].append(bare(None))
        res["bare_image_text"].append(bare(full_text))
        res["bare_image_trimmed_text"].append(bare(enc))
        res["build"].append(build())
        print(f"run {r + 1}: " + "  ".join(f"{k}={v[-1]:.2f} img/s" for k, v in res.items()), flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\n{a.model} ({a.pretrained}) on {clip.device} [{torch.get_num_threads()} threads], {len(names)} Flickr "
          f"photos+captions, batch {a.batch_size}, {a.workers} workers, median of {a.repeats}:")
    print(f"  bare encode_image            {med['bare_image']:8.2f} img/s")
    print(f"  bare encode_image+encode_text{med['bare_image_text']:8.2f} img/s  (open_clip encode_text)")
    print(f"  bare image+trimmed text      {med['bare_image_trimmed_text']:8.2f} img/s  (retrieval/text_fast.py)")
    print(f"  build_index end to end       {med['build']:8.2f} img/s  (text trimming: {enc.trim_text})")
    print(f"  ratio build / bare image       {med['build'] / med['bare_image']:.3f}")
    print(f"  ratio build / bare image+text  {med['build'] / med['bare_image_text']:.3f}")
    print(f"  ratio build / bare image+trimmed text  {med['build'] / med['bare_image_trimmed_text']:.3f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
