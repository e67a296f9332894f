"""The autofaiss peer of ``bench_scale.py``: clip-retrieval's index builder on the same vectors at the
same memory budget. Runs in autofaiss's own environment (it pins faiss-cpu 1.7.4 and pyarrow < 17):

    python3.11 -m venv /tmp/afvenv
    /tmp/afvenv/bin/pip install autofaiss==2.18.0 faiss-cpu==1.7.4 "pyarrow<17" "numpy<2"
    .venv/bin/python scripts/bench_scale.py --sizes 1000000 --paths compressed --autofaiss-python /tmp/afvenv/bin/python

``build``: ``autofaiss.build_index`` over the data's x.npy (as float32) with ``max_index_memory_usage``
the same bytes as ours and its defaults otherwise (inner product, 10 ms query-time target, its own
key choice and nprobe tuning). ``measure``: the index read from disk in a fresh process, single-query
p50 / p90 and recall@10 against brute force over the same vectors (what our clip recall is measured
against), batch QPS, anonymous RSS after the queries, and the same at wider nprobe (its recall/p50
curve, on 300 queries). Prints one JSON line. Imports nothing of ours.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import recall, status_mb  # noqa: E402


def exact_top10(data: Path) -> np.ndarray:
    """Brute-force inner-product top-10 of q.npy over x.npy, cached next to them."""
    cached = data / "clip_top10.npy"
    if cached.exists():
        return np.load(cached)
    q, x = np.load(data / "q.npy"), np.load(data / "x.npy", mmap_mode="r")
    best_s, best_i = np.full((len(q), 10), -np.inf, np.float32), np.zeros((len(q), 10), np.int64)
    for lo in range(0, len(x), 200_000):
        s = q @ np.asarray(x[lo:lo + 200_000], np.float32).T
        ss = np.concatenate([best_s, s], 1)
        ii = np.concatenate([best_i, np.broadcast_to(np.arange(lo, lo + s.shape[1]), s.shape)], 1)
        p = np.argpartition(-ss, 9, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(ss, p, 1), np.take_along_axis(ii, p, 1)
    np.save(cached, best_i)
    return best_i


def build(a) -> dict:
    from autofaiss import build_index

    x = np.load(Path(a.data) / "x.npy").astype(np.float32)
    t0 = time.perf_counter()
    _, infos = build_index(x, index_path=f"{a.out}.index", index_infos_path=f"{a.out}.json",
                           max_index_memory_usage=f"{int(a.budget)}B", current_memory_available="16G",
                           metric_type="ip", verbose=30)
    took = time.perf_counter() - t0
    return {"build_s": took, "key": infos["index_key"], "params": infos["index_param"],
            "index_bytes": Path(f"{a.out}.index").stat().st_size}


def _timed_queries(index, q: np.ndarray) -> tuple[list, np.ndarray]:
    index.search(q[:1], 10)
    lat, ids = [], []
    for i in range(len(q)):
        t = time.perf_counter()
        ids.append(index.search(q[i:i + 1], 10)[1][0])
        lat.append(time.perf_counter() - t)
    return lat, np.stack(ids)


def measure(a) -> dict:
    import faiss

    q, want = np.load(Path(a.data) / "q.npy"), exact_top10(Path(a.data))
    params = json.loads(Path(f"{a.out}.json").read_text())["index_param"]
    base = {"rss_before_mb": status_mb()}
    index = faiss.read_index(f"{a.out}.index")
    ps = faiss.ParameterSpace()
    ps.set_index_parameters(index, params)
    lat, got = _timed_queries(index, q)
    t = time.perf_counter()
    batch = index.search(q, 10)[1]
    out = {**base, "params": params, "p50_ms": 1e3 * statistics.median(lat),
           "p90_ms": 1e3 * float(np.quantile(lat, 0.9)), "recall": recall(got, want),
           "batch_qps": len(q) / (time.perf_counter() - t), "batch_recall": recall(batch, want),
           "rss_after_mb": status_mb(), "curve": []}
    nprobe = int(re.search(r"nprobe=(\d+)", params).group(1)) if "nprobe=" in params else 0
    for f in (2, 4) if nprobe else ():   # on the first 300 queries (a wide probe is slow)
        wider = re.sub(r"nprobe=\d+", f"nprobe={nprobe * f}", params)
        wider = re.sub(r"efSearch=\d+", f"efSearch={2 * nprobe * f}", wider)
        ps.set_index_parameters(index, wider)
        lat, got = _timed_queries(index, q[:300])
        out["curve"].append({"params": wider, "p50_ms": 1e3 * statistics.median(lat),
                             "recall": recall(got, want[:300])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("build", "measure"))
    ap.add_argument("--data", required=True, help="folder with x.npy (fp16 vectors) and q.npy (queries)")
    ap.add_argument("--out", required=True, help="path prefix of the index (.index) and its infos (.json)")
    ap.add_argument("--budget", type=float, default=160e6, help="max_index_memory_usage in bytes")
    a = ap.parse_args()
    print(json.dumps(build(a) if a.step == "build" else measure(a)))


if __name__ == "__main__":
    main()
