"""Service throughput: text queries through HTTP at concurrency 1, 4, 16 vs the same queries in-process.

Starts `retrieval serve`'s app (uvicorn, loopback) in this process's threads over one index, then:
- in-process: ``Index.query(text=..., k)`` one query after another (what a script would do);
- HTTP: C client threads, each with a keep-alive connection, POST /search for its share of the
  queries; QPS and p50/p99 latency per concurrency. The server micro-batches concurrent requests.
Default index: ../shared Flickr 1k with the tiny fixture CLIP (built into a temp folder).
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WORDS = ["dog", "man", "woman", "child", "bike", "beach", "snow", "street", "water", "grass", "ball", "car"]


def queries(n: int) -> list[str]:
    return [f"a {WORDS[i % 12]} near a {WORDS[(i * 7 + 3) % 12]} number {i}" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--index", default=None)
    ap.add_argument("--queries", type=int, default=480)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-wait-ms", type=float, default=4.0, help="the batcher's wait (as `retrieval serve --max-wait-ms`)")
    a = ap.parse_args()

    import uvicorn

    from retrieval import build_index, create_app, load_model, open_index

    shared = Path(a.shared)
    if a.index is None:
        clip = load_model(str(shared / "models" / "tiny-clip-mix"))
        flickr = shared / "data" / "flickr8k_1k"
        folder = Path(tempfile.mkdtemp(prefix="bench-service-")) / "idx"
        build_index(flickr / "captions.csv", folder, image_root=str(flickr / "images"), shard_size=300,
                    progress=False, clip=clip)
    else:
        folder, clip = Path(a.index), "auto"
    idx = open_index(folder, clip)
    app = create_app({"idx": idx}, max_wait_ms=a.max_wait_ms)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    qs = queries(a.queries)

    def in_process() -> tuple[float, list[float]]:
        lat = []
        t0 = time.perf_counter()
        for q in qs:
            t = time.perf_counter()
            idx.query(text=q, k=a.k)
            lat.append(time.perf_counter() - t)
        return len(qs) / (time.perf_counter() - t0), lat

    def http_run(c: int) -> tuple[float, list[float]]:
        def client(i: int) -> list[float]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            lat = []
            for q in qs[i::c]:
                t = time.perf_counter()
                conn.request("POST", "/search", json.dumps({"text": q, "k": a.k}), {"Content-Type": "application/json"})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
                lat.append(time.perf_counter() - t)
            conn.close()
            return lat

        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            lats = [x for part in pool.map(client, range(c)) for x in part]
        return len(qs) / (time.perf_counter() - t0), lats

    levels = [int(c) for c in a.concurrency.split(",")]
    in_process()
    http_run(levels[-1])  # warm-up
    res: dict[str, list[tuple[float, list[float]]]] = {"in-process": []}
    res.update({f"HTTP c={c}": [] for c in levels})
    for _ in range(a.repeats):
        res["in-process"].append(in_process())
        for c in levels:
            res[f"HTTP c={c}"].append(http_run(c))
    print(f"{a.queries} text queries, k={a.k}, index {len(idx)} rows ({idx.manifest['model'].get('arch')}), "
          f"median of {a.repeats}:")
    med = {}
    for name, runs in res.items():
        qps = statistics.median(r[0] for r in runs)
        lat = sorted(x for r in runs for x in r[1])
        p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
        med[name] = qps
        print(f"  {name:<12} {qps:8.1f} QPS   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    top = f"HTTP c={levels[-1]}"
    print(f"  ratio {top} / in-process        {med[top] / med['in-process']:.3f}")
    print(f"  ratio {top} / HTTP c={levels[0]}         {med[top] / med[f'HTTP c={levels[0]}']:.3f}")
    svc = app.state.service
    print(f"  batches: {svc.batcher.items} requests in {svc.batcher.batches} batches "
          f"(mean {svc.batcher.items / max(svc.batcher.batches, 1):.1f} per batch)")
    server.should_exit = True


if __name__ == "__main__":
    main()
