"""Shared by the benchmarks: seeded unit vectors (isotropic or clustered), recall, and process /
folder sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def unit_vectors(n: int, d: int, seed: int, clusters: int = 0, spread: float = 1.0,
                 dtype=np.float32, out=None) -> np.ndarray:
    """n unit vectors: isotropic (clusters=0) or around ``clusters`` seeded centres (noise ``spread``),
    generated in blocks of 100k (1M x 512 fp16 never holds 2 GB of fp32); written into ``out`` (e.g.
    a memory-mapped npy of n rows) when given."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype) if out is None else out
    centres = np.random.default_rng(12345).standard_normal((clusters, d)).astype(np.float32) if clusters else None
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        x = rng.standard_normal((m, d)).astype(np.float32)
        if clusters:
            x = centres[rng.integers(0, clusters, m)] + spread * x
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(got: np.ndarray, want: np.ndarray) -> float:
    """Mean overlap of each row of ``got`` with the same row of ``want`` (recall@k, k = want's width)."""
    return float(np.mean([len(set(a) & set(b)) / want.shape[1] for a, b in zip(got.tolist(), want.tolist())]))


def status_mb(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of a process in MiB, from /proc (empty once it has exited)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(val.split()[0]) / 1024
    except OSError:
        pass
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    import statistics
    import time

    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def baseline_tree(root: Path, commit: str, where: Path) -> Path:
    """A git worktree of ``commit`` at ``where`` (made once), to run the baseline side of a benchmark."""
    import subprocess

    if not (where / "retrieval").exists():
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-f", str(where), commit], check=True,
                       capture_output=True)
    return where


def flickr_arch_index(tmp: Path, shared: Path, arch: str, rows: int = 32) -> Path:
    """An index folder ``tmp / "idx"`` of the first ``rows`` Flickr fixture photos built with ``arch``'s
    architecture and random weights (the real model's size; no pretrained weights needed to time it)."""
    import csv

    from retrieval import build_index

    flickr = shared / "data" / "flickr8k_1k"
    with open(flickr / "captions.csv", newline="") as f:
        picked = list(csv.DictReader(f))[:rows]
    with open(tmp / "corpus.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(picked[0]))
        w.writeheader()
        w.writerows(picked)
    build_index(tmp / "corpus.csv", tmp / "idx", arch, "random", image_root=str(flickr / "images"), device="cpu",
                progress=False, workers=0)
    return tmp / "idx"
