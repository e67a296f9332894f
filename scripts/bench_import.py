"""`retrieval import` of a clip-retrieval inference folder: seconds and peak RSS against the data size.

Writes N synthetic rows (unit vectors around seeded centres, fp16, image and caption embeddings,
metadata image_path/caption/url) in clip-retrieval's layout (``--parts`` partitions, named as its
``OutputSink`` names them), then runs ``retrieval import`` in a child process and reads the child's
peak RSS, anonymous and file-backed (polled from /proc). For scale it also times reading every npy file once (the least any import
must do) in another child. Example:

    python scripts/bench_import.py --n 1000000 --parts 4 --work /tmp/bimp
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import folder_bytes, status_mb, unit_vectors  # noqa: E402


def write_source(folder: Path, n: int, d: int, parts: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = int(math.log10(parts)) + 1
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lo = 0
    for i in range(parts):
        hi = n * (i + 1) // parts
        s = str(i).zfill(width)
        img = unit_vectors(hi - lo, d, seed + 2 * i, clusters=4096, spread=1.0, dtype=np.float16)
        txt = unit_vectors(hi - lo, d, seed + 2 * i + 1, clusters=4096, spread=1.0, dtype=np.float16)
        np.save(folder / "img_emb" / f"img_emb_{s}.npy", img)
        np.save(folder / "text_emb" / f"text_emb_{s}.npy", txt)
        del img, txt
        rows = range(lo, hi)
        pq.write_table(pa.table({"image_path": [f"/data/images/{j:09d}.jpg" for j in rows],
                                 "caption": [f"synthetic caption {j}" for j in rows],
                                 "url": [f"https://example.com/{j:09d}.jpg" for j in rows]}),
                       folder / "metadata" / f"metadata_{s}.parquet")
        lo = hi


def child(cmd: list[str]) -> tuple[float, dict]:
    """(seconds, peaks in MiB of VmRSS / RssAnon / RssFile) of a child process, polled every 0.1 s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    while proc.poll() is None:
        for k, v in status_mb(proc.pid).items():
            peak[k] = max(peak[k], v)
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"import failed with exit code {proc.returncode}")
    return time.perf_counter() - t0, peak


READ_ALL = """
import sys, numpy as np, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).rglob('*.npy')):
    a = np.load(f, mmap_mode='r'); float(np.asarray(a[::1], np.float32).sum())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--index-key", default=None, help="faiss key (default: the engine's choice per shard)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working folder (default: a temp folder, removed)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_import_"))
    try:
        src, out = work / "clip-retrieval-out", work / "idx"
        shutil.rmtree(out, ignore_errors=True)
        if not (src / "img_emb").exists():
            print(f"writing {a.n} x {a.d} in {a.parts} parts ...", file=sys.stderr)
            write_source(src, a.n, a.d, a.parts, a.seed)
        data = folder_bytes(src)
        cmd = [sys.executable, "-m", "retrieval.cli", "import", str(src), "--out", str(out), "--model", "ViT-B-32",
               "--pretrained", "laion2b_s34b_b79k", "--shard-size", str(a.shard_size)]
        if a.index_key:
            cmd += ["--index-key", a.index_key]
        secs, peak = child(cmd)
        read_s = time.perf_counter()
        subprocess.run([sys.executable, "-c", READ_ALL, str(src)], check=True)
        read_s = time.perf_counter() - read_s
        m = json.loads((out / "manifest.json").read_text())
        keys = sorted({s["index"][mod]["key"] for s in m["shards"] for mod in s["index"]})
        print(f"{a.n} x {a.d} fp16, image + text, {a.parts} parts -> {len(m['shards'])} shards ({', '.join(keys)}), "
              f"biases from a corpus bank")
        print("| | value |\n|---|---:|")
        print(f"| source size (npy + Parquet) | {data / 2**20:.0f} MiB |")
        print(f"| `retrieval import` wall time | {secs:.1f} s ({a.n / secs:,.0f} rows/s) |")
        print(f"| peak RSS of the import | {peak['VmRSS']:.0f} MiB = **{peak['VmRSS'] * 2**20 / data:.3f} x the source size** |")
        print(f"| peak anonymous RSS (the process's own memory) | {peak['RssAnon']:.0f} MiB = "
              f"**{peak['RssAnon'] * 2**20 / data:.3f} x the source size** |")
        print(f"| peak file-backed RSS (mapped index files; the kernel can drop them) | {peak['RssFile']:.0f} MiB |")
        print(f"| reading every npy once (the floor) | {read_s:.1f} s = {read_s / secs:.3f} x the import |")
        print(f"| index folder size | {folder_bytes(out) / 2**20:.0f} MiB |")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
