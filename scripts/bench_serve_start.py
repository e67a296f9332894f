"""How soon a freshly started ``retrieval serve`` answers: whole-process wall time from the command's
start to its first text answer and its first image answer (POST /search), for a 32-image index of
the Flickr fixture built with ViT-B-32's architecture (random weights: the real model's size), next
to ``python -c "import torch"``; interleaved runs, medians.

- ``cached``: the model's text tower is in the cache (every start after the first): text queries
  are answered from it while the full model loads in the background (``serve.startup``);
- ``first``: an empty cache (a first start): the full model loads before serving, and its tower is
  cached for the next start in the background (each start is stopped once a tower is cached).

    python scripts/bench_serve_start.py [--repeats 5] [--arch ViT-B-32]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from synthetic import flickr_arch_index

HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _cached(cache: Path) -> bool:
    """Whether ``cache`` holds a finished text-tower entry (``embed.text_cache``)."""
    return cache.is_dir() and any((p / "meta.json").is_file() for p in cache.iterdir() if not p.name.startswith("."))


def start(idx: Path, env: dict, image: str) -> tuple[float, float, float]:
    """(seconds to the first text answer, to the first image answer, to the text tower cached) of one
    ``retrieval serve``; it is stopped once the tower is cached (a first start caches it meanwhile)."""
    port = _port()
    url = f"http://127.0.0.1:{port}/search"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", str(idx), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            try:
                _post(url, {"text": "a dog running on the grass", "k": 5})
                text = time.perf_counter() - t0
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"retrieval serve exited:\n{proc.stderr.read()[-2000:]}")
                time.sleep(0.01)
        _post(url, {"image_base64": image, "k": 5})
        image_s = time.perf_counter() - t0
        cache = Path(env["RETRIEVAL_CACHE_DIR"])
        while not _cached(cache) and time.perf_counter() - t0 < 300:
            time.sleep(0.01)
        return text, image_s, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--shared", type=Path, default=HERE.parents[1] / "shared")
    a = ap.parse_args(argv)
    photo = sorted((a.shared / "data" / "flickr8k_1k" / "images").iterdir())[0]
    image = base64.b64encode(photo.read_bytes()).decode()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        idx = flickr_arch_index(tmp, a.shared, a.arch)
        cache = tmp / "cache"
        env = dict(os.environ, RETRIEVAL_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        times: dict[str, list] = {"import torch": [], "first": [], "cached": []}
        for _ in range(a.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True)
            times["import torch"].append((time.perf_counter() - t, 0.0, 0.0))
            shutil.rmtree(cache, ignore_errors=True)
            times["first"].append(start(idx, env, image))     # full model first; leaves the tower cached
            times["cached"].append(start(idx, env, image))
    torch_s = float(np.median([r[0] for r in times["import torch"]]))
    print(f"retrieval serve, {a.arch} (random weights), 32-image index; whole process, median of {a.repeats} "
          f"interleaved starts; `python -c \"import torch\"` {torch_s:.2f} s")
    for mode, label in (("cached", "text tower cached (every later start)"),
                        ("first", "empty cache (first start: full model first)")):
        text, image_s, tower = (float(np.median([r[i] for r in times[mode]])) for i in (0, 1, 2))
        print(f"  {label:<44} first text answer {text:5.2f} s ({text / torch_s:.2f}x import torch), "
              f"first image answer {image_s:5.2f} s" + (f", text tower cached at {tower:.2f} s" if mode == "first" else ""))


if __name__ == "__main__":
    main()
