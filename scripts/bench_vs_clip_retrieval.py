"""Whole-build time: ``retrieval build`` vs rom1504/clip-retrieval 2.45 (``inference`` + ``index``).

Same corpus (the first N Flickr photos with their first caption, as WebDataset tars of jpg + txt + json
samples, one tar per worker; clip-retrieval 2.45's folder reader cannot pair images with .txt captions: its keys keep
the file extension, so every item raises KeyError), same checkpoint (a
ViT-B-32 state dict saved to a local .pt; random weights, speed does not depend on them), same batch
size and worker count, CPU. Each side is timed as whole CLI commands, start-up and model load
included, alternately, ``--repeats`` times; medians and the ratio are printed.

clip-retrieval is not a dependency of this project; install it into its own venv first, e.g.
  python3 -m venv /tmp/crvenv && echo torch==2.13.0 > /tmp/c.txt &&
  /tmp/crvenv/bin/pip install -c /tmp/c.txt torch==2.13.0 clip-retrieval==2.45.0 "setuptools<70"
(clip-anytorch imports pkg_resources). Where pip pairs CPU torch with a CUDA torchvision, that venv also
needs the op-schema shim of retrieval/_compat.py, e.g. as a sitecustomize.py in its site-packages.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def _run(cmd: list[str], env: dict, timeout: float = 1200) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def write_tars(flickr: Path, n: int, n_tars: int, corpus: Path) -> Path:
    """The first ``n`` Flickr photos with their first caption as ``n_tars`` WebDataset tars (one per
    worker: webdataset gives a worker without a shard an error)."""
    from retrieval import open_corpus

    corpus.mkdir(parents=True)
    reader = open_corpus(str(flickr / "captions.csv"), image_root=str(flickr / "images"))
    first = {e.key: e.caption for e in reader.entries()}  # first caption per photo
    names = list(first)[:n]
    for t in range(n_tars):
        with tarfile.open(corpus / f"{t:05d}.tar", "w") as tf:
            for i in range(t, len(names), n_tars):
                for ext, data in (("jpg", (flickr / "images" / names[i]).read_bytes()),
                                  ("txt", first[names[i]].encode()), ("json", json.dumps({"image": names[i]}).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--clip-retrieval", default="/tmp/crvenv/bin/clip-retrieval", help="clip-retrieval executable")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if not Path(a.clip_retrieval).exists():
        sys.exit(f"clip-retrieval not found at {a.clip_retrieval}; see this script's docstring")
    flickr = Path(a.shared).resolve() / "data" / "flickr8k_1k"
    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-cr-"))
    n_tars = max(1, a.workers)
    corpus = write_tars(flickr, a.n, n_tars, tmp / "wds")
    tars = f"{corpus}/{{00000..{n_tars - 1:05d}}}.tar"
    ckpt = tmp / "vit-b-32-random.pt"
    import torch

    from retrieval import load_model

    torch.save(load_model("ViT-B-32", "random", device="cpu").model.state_dict(), ckpt)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ours_bin = str(Path(sys.executable).with_name("retrieval"))

    def ours() -> float:
        shutil.rmtree(tmp / "ours", ignore_errors=True)
        return _run([ours_bin, "build", str(corpus), "--out", str(tmp / "ours"), "--model", "ViT-B-32",
                     "--pretrained", str(ckpt), "--batch-size", str(a.batch_size), "--workers", str(a.workers),
                     "--device", "cpu", "--quiet"], env)

    def theirs() -> float:
        for d in ("cr-emb", "cr-idx"):
            shutil.rmtree(tmp / d, ignore_errors=True)
        t = _run([a.clip_retrieval, "inference", "--input_dataset", tars, "--output_folder", str(tmp / "cr-emb"),
                  "--clip_model", f"open_clip:ViT-B-32/{ckpt}", "--batch_size", str(a.batch_size),
                  "--num_prepro_workers", str(a.workers), "--enable_metadata", "True", "--enable_wandb", "False",
                  "--input_format", "webdataset", "--wds_image_key", "jpg", "--wds_caption_key", "txt"], env)
        return t + _run([a.clip_retrieval, "index", "--embeddings_folder", str(tmp / "cr-emb"),
                         "--index_folder", str(tmp / "cr-idx")], env)

    res: dict[str, list[float]] = {"ours": [], "clip_retrieval": []}
    for r in range(a.repeats):
        res["ours"].append(ours())
        res["clip_retrieval"].append(theirs())
        print(f"run {r + 1}: ours {res['ours'][-1]:.1f} s, clip-retrieval {res['clip_retrieval'][-1]:.1f} s", flush=True)
    o, c = statistics.median(res["ours"]), statistics.median(res["clip_retrieval"])
    print(f"\n{a.n} Flickr photos + captions, ViT-B-32 (same local checkpoint), CPU, batch {a.batch_size}, "
          f"{a.workers} workers, median of {a.repeats}:")
    print(f"  retrieval build                     {o:7.1f} s  {a.n / o:6.2f} img/s")
    print(f"  clip-retrieval inference + index    {c:7.1f} s  {a.n / c:6.2f} img/s")
    print(f"  throughput ratio ours / clip-retrieval  {c / o:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
