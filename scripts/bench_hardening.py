"""The cost of the second hardening round, this checkout vs a baseline commit, each in its own processes.

1. **Attacks** (a real ``retrieval serve``, the Flickr photos' first --photos built with the fixture
   model): the server's RSS (VmRSS) before and after ``POST /search`` with the ``where`` memory bomb
   (``length(repeat(caption, 300000)) > 0``) and ``POST /classify`` with the template bomb
   (``{:>999999999}``), the seconds each request took, its status, and the server's peak (VmHWM).
   A request the baseline cannot finish within --attack-timeout is reported as such.
2. **Legitimate filters**: the latency of ``where`` expressions over a --rows metadata table (two Parquet
   shards; ``query.filters.Filters``, each call a new expression so nothing is cached), medians of
   --repeats calls per expression, rounds alternating between the two sides (--rounds).

The baseline runs from a git worktree of --baseline (``PYTHONPATH=<worktree>``); --no-baseline skips it.
Run from the repository root: ``python scripts/bench_hardening.py``.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from synthetic import baseline_tree, status_mb  # noqa: E402

WHERE = ["year >= 2020", "caption LIKE '%dog%'", "grp IN (1, 2, 3) AND year BETWEEN 2001 AND 2010",
         "lower(caption) LIKE 'a photo of%' AND score > 0.5"]


# ---- workers (run with either side's code first on sys.path) ---------------------------------------

def work_where(a) -> dict:
    import numpy as np

    from retrieval.query.filters import Filters

    shards = [{"files": {"metadata": f"metadata/m{i}.parquet"}} for i in range(2)]
    f = Filters(Path(a.data), shards, np.array([a.rows // 2, a.rows - a.rows // 2]))
    f.columns()  # the metadata table is loaded once per index; the calls below are what a filter costs
    out = {}
    for j, where in enumerate(WHERE):
        times = []
        for r in range(a.repeats):
            t0 = time.perf_counter()
            f.selection(f"({where}) AND key <> 'none-{j}-{r}'")  # a new expression each call: never cached
            times.append(time.perf_counter() - t0)
        out[where] = statistics.median(times)
    return out


def _call(url: str, body: dict, timeout: float) -> tuple[int, float]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (TimeoutError, OSError):
        status = -1  # no answer within the timeout
    return status, time.perf_counter() - t0


def _hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def attacks(python_path: str, index: Path, timeout: float, photo: str) -> dict:
    """The attacks on a server running ``python_path``'s code (``photo``: a real image, base64, so a
    request gets past decoding to where the template is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path}
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", f"meta={index}", "--port", str(port)],
                            stderr=subprocess.DEVNULL, env=env, cwd=python_path)  # -m puts the cwd first on sys.path
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        _call(url + "/search", {"text": "dog", "k": 3, "where": "caption LIKE '%dog%'"}, 60)   # warm: model, filters
        _call(url + "/classify", {"images_base64": [photo], "classes": ["a", "b"]}, 60)
        out = {}
        for name, route, body in (
                ("where", "/search", {"text": "dog", "k": 3, "index": "meta", "where": "length(repeat(caption, 300000)) > 0"}),
                ("template", "/classify", {"images_base64": [photo], "classes": ["cat", "dog"], "templates": ["{:>999999999}"]})):
            before = status_mb(proc.pid)["VmRSS"]
            status, secs = _call(url + route, body, timeout)
            time.sleep(1.0)
            out[name] = {"status": status, "seconds": round(secs, 3), "rss_before_mb": round(before),
                         "rss_after_mb": round(status_mb(proc.pid).get("VmRSS", float("nan"))),
                         "peak_mb": round(_hwm(proc.pid))}
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- orchestration -------------------------------------------------------------------------------

def write_metadata(folder: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    words = np.array(["a photo of a dog", "a cat on a mat", "a photo of a red car", "two people walking",
                      "a dog running on grass", "a bowl of fruit"])
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    half = rows // 2
    for i, (lo, hi) in enumerate(((0, half), (half, rows))):
        n = hi - lo
        pq.write_table(pa.table({"key": [f"k{j}" for j in range(lo, hi)],
                                 "caption": [f"{w} {j}" for w, j in zip(words[rng.integers(0, len(words), n)], range(lo, hi))],
                                 "year": rng.integers(1990, 2025, n), "grp": rng.integers(0, 100, n),
                                 "score": rng.random(n)}), folder / "metadata" / f"m{i}.parquet", row_group_size=4096)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["where"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--baseline", default="0c8b4d8", help="commit to compare with (before this round)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--attack-timeout", type=float, default=180.0)
    ap.add_argument("--skip-attacks", action="store_true")
    a = ap.parse_args()
    if a.worker == "where":
        print(json.dumps(work_where(a)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-hardening-"))
    sides = {"this checkout": str(ROOT)}
    if not a.no_baseline:
        sides = {f"baseline {a.baseline}": str(baseline_tree(ROOT, a.baseline, work / "baseline-code")), **sides}
    write_metadata(work / "meta", a.rows)
    timings: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(a.rounds):
        for side, path in sides.items():
            r = subprocess.run([sys.executable, __file__, "--worker", "where", "--data", str(work / "meta"), "--rows",
                                str(a.rows), "--repeats", str(a.repeats)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": path}, check=True)
            timings[side].append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"\nwhere latency over {a.rows:,} metadata rows (ms, median of {a.rounds} rounds x {a.repeats} calls)")
    names = list(sides)
    print(f"  {'expression':<58}" + "".join(f"{n:>22}" for n in names) + ("   ratio" if len(names) == 2 else ""))
    for w in WHERE:
        med = [statistics.median(t[w] for t in timings[n]) * 1e3 for n in names]
        print(f"  {w:<58}" + "".join(f"{m:>22.1f}" for m in med) + (f"   {med[1] / med[0]:.2f}x" if len(med) == 2 else ""))
    if not a.skip_attacks:
        corpus = Path(a.shared) / "data" / "flickr8k_1k"
        lines = (corpus / "captions.csv").read_text().splitlines()
        seen, keep = set(), [lines[0]]
        for line in lines[1:]:
            name = line.split(",", 1)[0]
            if name not in seen and len(seen) >= a.photos:
                break
            seen.add(name)
            keep.append(line)
        (work / "captions.csv").write_text("\n".join(keep) + "\n")
        subprocess.run([sys.executable, "-m", "retrieval.cli", "build", str(work / "captions.csv"), "--out",
                        str(work / "idx"), "--image-root", str(corpus / "images"), "--model",
                        str(Path(a.shared) / "models" / "tiny-clip-mix"), "--quiet"], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
        print(f"\nattacks on `retrieval serve` over {a.photos} photos (RSS in MB; status -1: no answer in "
              f"{a.attack_timeout:.0f} s)")
        for side, path in sides.items():
            photo = base64.b64encode((corpus / "images" / keep[1].split(",", 1)[0]).read_bytes()).decode()
            got = attacks(path, work / "idx", a.attack_timeout, photo)
            for name, r in got.items():
                print(f"  {side:<22} {name:<9} status {r['status']:>4}  {r['seconds']:7.2f} s  RSS {r['rss_before_mb']:>6} -> "
                      f"{r['rss_after_mb']:>6} (+{r['rss_after_mb'] - r['rss_before_mb']})  peak {r['peak_mb']}")
    if not a.no_baseline:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline-code")],
                       capture_output=True)


if __name__ == "__main__":
    main()
