"""Ray, one run: `build --ray` on a local cluster vs the single-process build (same corpus), then
sharded serving (``ray_serving.py``: fan-out vs in-process search on 1M vectors in 8 shards, and a
merged on-disk index vs the shards).

The corpus: the Flickr 1k photos and the CIFAR-10 1k test photos (2,000 images, Flickr's first
caption each, CIFAR's "a photo of a CLASS."), as one CSV manifest. Both sides use the same model
(default: the fixture CLIP in ../shared/models; ``--model ViT-B-32 --pretrained random`` for the real
architecture), batch size and shard size, and each build runs in its own fresh process
(``python -m retrieval.cli build``), alternating, ``--repeats`` times; medians and their ratio are
printed. Single process: a DataLoader with ``--workers`` decode workers and the model in the main
process. Ray: a local cluster started by the build (``--ray``), one actor per CPU (``--ray-actors``),
each decoding and embedding its tasks; the time includes starting the cluster and loading the model
in every actor. The two folders are compared (keys in order, embeddings within fp16 rounding).

    python scripts/bench_ray.py --shared ../shared                   # both halves
    python scripts/bench_ray.py --skip-serve ...  /  --skip-build ...  # one half
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def corpus(shared: Path, out: Path, n: int) -> Path:
    rows, seen = [], set()
    with open(shared / "data" / "flickr8k_1k" / "captions.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["image"] not in seen:
                seen.add(r["image"])
                rows.append({"image": str(shared / "data" / "flickr8k_1k" / "images" / r["image"]), "caption": r["caption"]})
    cifar = shared / "data" / "cifar10_test_1k"
    with open(cifar / "labels.csv", newline="") as f:
        rows += [{"image": str(cifar / r["path"]), "caption": f"a photo of a {r['label']}."} for r in csv.DictReader(f)]
    path = out / "corpus.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "caption"])
        w.writeheader()
        w.writerows(rows[:n])
    return path


def build(cmd: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    r = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--model", default=None, help="default: the fixture CLIP")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="single process: DataLoader decode workers")
    ap.add_argument("--ray-actors", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-build", action="store_true", help="only the serving half")
    ap.add_argument("--skip-serve", action="store_true", help="only the build half")
    ap.add_argument("--serve-n", type=int, default=1_000_000, help="serving: vectors")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--index-key", default="IVF1024,Flat")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--groups", type=int, default=2, help="serving: Ray shard groups (1 replica each)")
    ap.add_argument("--batch", type=int, default=256, help="serving: queries per timed batch")
    ap.add_argument("--out", default=None, help="serving: keep the index folder here (default: a temp folder)")
    a = ap.parse_args()
    if not a.skip_build:
        bench_build(a)
    if not a.skip_serve:
        from ray_serving import run

        out = a.out or tempfile.mkdtemp(prefix="bench-ray-serve-")
        Path(out).mkdir(parents=True, exist_ok=True)
        try:
            run(argparse.Namespace(**{**vars(a), "out": out}))
        finally:
            if a.out is None:
                shutil.rmtree(out, ignore_errors=True)


def bench_build(a) -> None:
    shared = Path(a.shared).resolve()
    model = a.model or str(shared / "models" / "tiny-clip-mix")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = corpus(shared, tmp, a.n)
        base = [sys.executable, "-m", "retrieval.cli", "build", str(src), "--model", model, "--quiet",
                "--batch-size", str(a.batch_size), "--shard-size", "1000"]
        if a.pretrained:
            base += ["--pretrained", a.pretrained]
        sides = {"single process": base + ["--workers", str(a.workers)],
                 "ray": base + ["--workers", "0", "--ray", "--ray-actors", str(a.ray_actors)]}
        times: dict = {k: [] for k in sides}
        for _ in range(a.repeats):
            for name, cmd in sides.items():
                times[name].append(build(cmd, tmp / name.replace(" ", "_")))
        from retrieval import open_index

        x, y = open_index(tmp / "single_process"), open_index(tmp / "ray")
        ids = np.arange(len(x))
        same = ([r["key"] for r in x.metadata(ids)] == [r["key"] for r in y.metadata(ids)]
                and float(np.abs(x.embeddings(ids) - y.embeddings(ids)).max()) < 2e-3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.n} images, model {Path(model).name}, batch {a.batch_size}, {os.cpu_count()} CPUs, "
          f"{a.repeats} alternating rounds (medians)")
    for k, v in med.items():
        print(f"  {k:15s} {v:7.2f} s  {a.n / v:7.1f} img/s   runs: {', '.join(f'{t:.2f}' for t in times[k])}")
    print(f"  ray / single-process time: {med['ray'] / med['single process']:.3f} "
          f"(overhead {100 * (med['ray'] / med['single process'] - 1):+.1f}%); folders equal: {same}")


if __name__ == "__main__":
    main()
