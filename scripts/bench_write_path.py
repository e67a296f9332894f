"""The write path, measured against the bare operations it is made of (one run, ratios).

- ``offsets``: the BSAP log-sum-exp and the NNN top-k of N items [N, d] against a 4,096-row bank and
  4,096 references: the engine's one-pass ``methods.offsets.item_offsets`` in fp32 and in bf16 math
  vs the previous numpy path (``bsap_offsets`` + ``nnn_bias``: numpy GEMM, ``np.partition``) vs the
  bare torch matmuls of the same shapes in the same blocks in each math (the machine's GEMM speed),
  as GFLOP/s.
- ``build``: ``build_from_embeddings`` of N image + N text vectors into one ``IVF{lists},Flat`` shard
  per modality (biases included) vs bare faiss training (on the engine's sample size) and filling
  the same two indexes; and the time until the folder is searchable (``bias_later``); ``--rounds``
  of them interleaved (with LanceDB in each round when ``lance`` is asked too), ratios per round; and
  the floor: the searchable time plus the second stage's products timed bare (scripts/gemm_floor.py).
- ``cli``: whole-process wall times from a shell (median of ``--repeats``, interleaved) of
  ``retrieval search IDX "a dog"`` (the text tower cached by a first, untimed-in-the-ratio run),
  ``retrieval search IDX --embedding F.npy`` and ``retrieval info IDX`` vs ``python -c "import torch"``,
  on a 32-image index of the Flickr fixture built with ViT-B-32's architecture (random weights: the
  real model's size; no pretrained weights are needed to time it).

- ``appends``: ``add_embeddings`` of 100 rows (10 times) and of 10,000 rows (4 times), image + text,
  into a built N-row ``IVF{lists},Flat`` folder, each one publish (the first of each size, which reads
  the stored banks, reported apart; then the median of the rest), and single-query QPS (clip, exact
  BSAP) and recall@10 against numpy brute force over the stored vectors and offsets: as built, after
  each kind of append, and after ``compact``.
- ``where``: the first ``where`` query on a freshly opened folder of N rows with five metadata
  columns (a new process each time: open, one plain query, then the timed filtered query; duckdb
  imported before the clock starts), and the second one, median of ``--repeats`` processes; with the
  default open and with ``open_index(warm=True)`` (what ``retrieval serve`` does: DuckDB connected
  in a background thread from the open on; no pause is left between the open and the queries).

- ``metadata``: what a build writes for N metadata rows besides the vectors (the stored schema and key
  checks, the Parquet file, the full-text texts; then the tantivy index of those texts), given as a
  pyarrow Table and as dicts, vs the bare Parquet write of the Table and the bare Arrow conversion of
  the dicts (``pa.Table.from_pylist``).

- ``lance``: LanceDB 0.40's ``create_table`` + ``create_index`` on the same vectors and its 10k-row
  ``add`` (scripts/peer_lancedb.py says how to install it); with ``build``, inside each round.

    python scripts/bench_write_path.py [--n 200000] [--parts offsets,build,appends,cli,where,lance] [--rounds 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from gemm_floor import calibration_products, offset_products
from peer_lancedb import lancedb_build
from synthetic import flickr_arch_index, unit_vectors


def median_run(fn, repeats: int) -> tuple[float, object]:
    """(median seconds, last result) of ``repeats`` runs."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def offsets(n: int, d: int, bank_rows: int, k: int, repeats: int) -> dict:
    import torch

    from retrieval.methods.offsets import BLOCK, item_offsets
    from retrieval.methods.rerank import bsap_offsets, nnn_bias
    from retrieval.store.bf16 import matmul_math, mode_rounds

    x = unit_vectors(n, d, 1, clusters=64, spread=0.5)
    bank, refs = unit_vectors(bank_rows, d, 2), unit_vectors(bank_rows, d, 3)
    X, B, R = torch.from_numpy(x), torch.from_numpy(bank).T.contiguous(), torch.from_numpy(refs).T.contiguous()
    outs = torch.empty(BLOCK, bank_rows), torch.empty(BLOCK, bank_rows)

    def bare(math: str):
        with torch.inference_mode(), matmul_math(torch, math):
            for i in range(0, n, BLOCK):
                torch.matmul(X[i:i + BLOCK], B, out=outs[0][:len(X[i:i + BLOCK])])
                torch.matmul(X[i:i + BLOCK], R, out=outs[1][:len(X[i:i + BLOCK])])

    flop, t, got = 2 * 2 * n * bank_rows * d, {}, {}
    runs = {"bare fp32": lambda: bare("fp32"), "bare bf16": lambda: bare("bf16"),
            "fp32": lambda: item_offsets(x, bank, refs, 50.0, k, precision="fp32"),
            "bf16": lambda: item_offsets(x, bank, refs, 50.0, k, precision="bf16"),
            "numpy": lambda: (bsap_offsets(x, bank, 50.0), nnn_bias(x, refs, k)),
            "one": lambda: item_offsets(x, bank, bank, 50.0, k)}
    for name, fn in runs.items():
        t[name], got[name] = median_run(fn, repeats)
    old = got["numpy"]
    err = {p: max(float(np.abs(got[p]["bsap"] - old[0]).max()), float(np.abs(got[p]["nnn"] - old[1]).max()))
           for p in ("fp32", "bf16")}
    print(f"offsets of {n} x {d} items, bank {bank_rows}, references {bank_rows}, k {k} (median of {repeats}):")
    for name, label, base in (("bare fp32", "bare matmuls, fp32", "bare fp32"), ("bare bf16", "bare matmuls, bf16 math",
                              "bare bf16"), ("fp32", "item_offsets fp32", "bare fp32"),
                              ("bf16", "item_offsets bf16", "bare bf16"), ("numpy", "numpy (previous)", "bare fp32")):
        print(f"  {label:<24} {t[name]:7.2f} s  {flop / t[name] / 1e9:6.1f} GFLOP/s  {t[base] / t[name]:5.2f}x of the "
              f"bare matmul speed in its math")
    print(f"  largest difference vs numpy float32: fp32 {err['fp32']:.1e}, bf16 {err['bf16']:.1e}; bf16 "
          f"{t['fp32'] / t['bf16']:.2f}x faster than fp32, {t['numpy'] / t['bf16']:.2f}x than numpy")
    print(f"  one sample as bank and references (what a build stores where it can), auto math: {t['one']:.2f} s")
    print(f"  this CPU's bf16 math mode rounds to bf16: {mode_rounds()}")
    return t


def build(n: int, d: int, lists: int, rounds: int = 1, lance_python: Optional[str] = None) -> dict:
    """``rounds`` rounds, each in the order: bare faiss, ours to searchable, ours whole, and LanceDB when
    ``lance_python`` is given; medians and the median of each round's ratios (the machine's speed
    drifts by +-15 % between minutes: a ratio within one round is what holds)."""
    import faiss

    from retrieval import build_from_embeddings
    from retrieval.store.keys import sample_ids, train_size

    img, txt = unit_vectors(n, d, 4, clusters=256, spread=0.5), unit_vectors(n, d, 5, clusters=256, spread=0.5)
    runs: list[dict] = []
    for _ in range(rounds):
        took = {}
        t = time.perf_counter()
        for x in (img, txt):
            index = faiss.index_factory(d, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
            index.train(x[sample_ids(n, train_size(f"IVF{lists},Flat", n))])   # the sample size the engine trains on
            index.add(x)
        took["bare"] = time.perf_counter() - t
        for name, later in (("searchable", True), ("ours", False)):   # searchable: returns before the offsets
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                build_from_embeddings(Path(tmp) / "idx", img, txt, {"arch": "synthetic", "logit_scale": 100.0},
                                      shard_size=n, index_key=f"IVF{lists},Flat", bias_later=later)
                took[name] = time.perf_counter() - t
        took["floor"] = took["searchable"] + offset_products([img, txt]) + calibration_products([img, txt])
        peer = lancedb_build(n, d, lists, lance_python) if lance_python else None
        if peer is not None:
            took["lance"], took["lance_add_10k"] = peer["total"], peer["add_10k"]
        runs.append(took)
        print("  round: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items() if k != "lance_add_10k"))
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    ratio = {f"{a}/{b}": float(np.median([r[a] / r[b] for r in runs]))
             for a, b in (("ours", "bare"), ("searchable", "bare"), ("floor", "bare"), ("ours", "lance"))
             if a in med and b in med}
    print(f"build of {n} x {d} image + text, IVF{lists},Flat ({rounds} round{'s' * (rounds > 1)}, medians): "
          f"build_from_embeddings {med['ours']:.1f} s, searchable after {med['searchable']:.1f} s; bare faiss train "
          f"+ add of the two indexes {med['bare']:.1f} s: total {ratio['ours/bare']:.2f}x, to searchable "
          f"{ratio['searchable/bare']:.2f}x (medians of the rounds' ratios)")
    print(f"  floor: searchable + the second stage's bare products (offsets, calibration; scripts/gemm_floor.py) "
          f"{med['floor']:.1f} s = {ratio['floor/bare']:.2f}x bare faiss")
    if "lance" in med:
        print(f"  LanceDB 0.40 create_table + IVF{lists}_FLAT (dot) on both columns {med['lance']:.1f} s: ours / LanceDB "
              f"{ratio['ours/lance']:.2f}x; its add of 10k rows {med['lance_add_10k'] * 1e3:.0f} ms (appended unindexed)")
    return {**med, "ratios": ratio, "runs": runs}


def cli(repeats: int, shared: Path, arch: str) -> dict:
    import os
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        idx = flickr_arch_index(tmp, shared, arch)
        np.save(tmp / "q.npy", unit_vectors(1, int(json_manifest(idx)["model"]["embed_dim"]), 9)[0])
        env = dict(os.environ, RETRIEVAL_CACHE_DIR=str(tmp / "cache"), HF_HUB_OFFLINE="1")
        exe = [sys.executable, "-m", "retrieval.cli"]
        commands = {"import torch": [sys.executable, "-c", "import torch"],
                    "search text": exe + ["search", str(idx), "a dog", "--k", "5"],
                    "search --embedding": exe + ["search", str(idx), "--embedding", str(tmp / "q.npy"), "--k", "5"],
                    "info": exe + ["info", str(idx)]}

        def wall(cmd) -> float:
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t

        first = wall(commands["search text"])   # loads open_clip whole, caches the text tower
        times = {name: [] for name in commands}
        for _ in range(repeats):
            for name, cmd in commands.items():
                times[name].append(wall(cmd))
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"command line, {arch} (random weights), whole process, median of {repeats}:")
    print(f"  first text search (full open_clip load, caches the text tower): {first:.2f} s")
    for name, t in med.items():
        print(f"  {name:<20} {t:6.2f} s  {t / med['import torch']:5.2f}x import torch")
    return {**med, "first": first}


_FIRST_WHERE = """
import sys, time, duckdb, numpy as np
from retrieval import open_index
idx = open_index(sys.argv[1], warm=sys.argv[3] == "1"); q = np.load(sys.argv[2])
idx.query(embedding=q, k=10)
t = time.perf_counter(); a = idx.query(embedding=q, k=10, where="year >= 2020 AND folder = 'f23'")[0]
t1 = time.perf_counter(); b = idx.query(embedding=q, k=10, where="width < 500")[0]; t2 = time.perf_counter()
assert len(a) == len(b) == 10
print(t1 - t, t2 - t1)
"""


def first_where(n: int, d: int, lists: int, repeats: int) -> dict:
    import subprocess
    import sys

    from retrieval import build_from_embeddings

    rng = np.random.default_rng(0)
    rows = [{"key": f"k{i}", "year": 2000 + i % 25, "folder": f"f{i % 50}", "caption": f"caption number {i}",
             "width": int(w)} for i, w in enumerate(rng.integers(100, 4000, n))]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "idx"
        build_from_embeddings(folder, unit_vectors(n, d, 4, clusters=256, spread=0.5),
                              unit_vectors(n, d, 5, clusters=256, spread=0.5), {"arch": "synthetic", "logit_scale": 100.0},
                              rows=rows, shard_size=n // 4, index_key=f"IVF{lists // 4},Flat")
        np.save(Path(tmp) / "q.npy", unit_vectors(1, d, 9))
        got = {w: [] for w in ("0", "1")}
        for _ in range(repeats):   # interleaved: default open, then open_index(warm=True) as `retrieval serve` opens
            for w in got:
                got[w].append(subprocess.run([sys.executable, "-c", _FIRST_WHERE, str(folder), str(Path(tmp) / "q.npy"), w],
                                             check=True, capture_output=True, text=True).stdout.split())
    out = {}
    for w, runs in got.items():
        first, second = (float(np.median([float(g[i]) for g in runs])) * 1e3 for i in (0, 1))
        out["warm" if w == "1" else "default"] = {"first_ms": first, "second_ms": second}
        print(f"where on a freshly opened {n}-row folder (4 shards, 5 metadata columns), "
              f"{'warm=True (serve)' if w == '1' else 'default open'}, median of {repeats} processes: "
              f"first {first:.0f} ms, second {second:.0f} ms")
    return out


def _serving(folders: dict[str, Path], q: np.ndarray, rounds: int, k: int = 10) -> dict:
    """Per folder: single-query QPS of clip and exact BSAP (median over ``rounds`` interleaved rounds,
    and the median of each round's ratio to the first folder) and recall@k vs numpy brute force."""
    from synthetic import recall

    from retrieval import open_index

    opened = {name: open_index(f) for name, f in folders.items()}
    out = {name: {"rows": len(idx), "shards": len(idx.shards)} for name, idx in opened.items()}
    for name, idx in opened.items():
        ids = np.concatenate([s["offset"] + np.arange(s["rows"]) for s in idx.shards])  # shard order (no deletes)
        x = idx.embeddings(ids, "image")
        for method, c in (("clip", np.zeros(len(x), np.float32)), ("bsap", idx.biases.all("bsap", "image"))):
            s = q @ x.T - c
            out[name][method] = {"recall": recall(idx.search(q, k, rerank=method)[1],
                                                  ids[np.argpartition(-s, k - 1, axis=1)[:, :k]]), "qps": []}
            for qi in q:   # warm: page cache, lazy loads
                idx.search(qi[None], k, rerank=method)
    first = next(iter(opened))
    for _ in range(rounds):
        for method in ("clip", "bsap"):
            for name, idx in opened.items():
                t = time.perf_counter()
                for qi in q:
                    idx.search(qi[None], k, rerank=method)
                out[name][method]["qps"].append(len(q) / (time.perf_counter() - t))
    for name in opened:
        for method in ("clip", "bsap"):
            r = out[name][method]
            r["ratio"] = float(np.median(np.array(r["qps"]) / np.array(out[first][method]["qps"])))
            r["qps"] = float(np.median(r["qps"]))
    return out


def appends(n: int, d: int, lists: int, repeats: int) -> dict:
    """Appends of 100 and 10,000 rows into an n-row folder; serving as built, after each kind of
    append and after a compact (a copy of the folder kept at each stage, all served interleaved)."""
    import shutil

    from retrieval import add_embeddings, build_from_embeddings
    from retrieval.ops.compact import compact

    took: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder, stages = Path(tmp) / "idx", {}
        build_from_embeddings(folder, unit_vectors(n, d, 4, clusters=256, spread=0.5),
                              unit_vectors(n, d, 5, clusters=256, spread=0.5), {"arch": "synthetic", "logit_scale": 100.0},
                              rows=[{"key": f"k{i}"} for i in range(n)], shard_size=n, index_key=f"IVF{lists},Flat")

        def keep(name: str) -> None:
            stages[name] = Path(tmp) / f"stage{len(stages)}"
            shutil.copytree(folder, stages[name])

        keep("built")
        for m, times in ((100, max(repeats, 10)), (10_000, max(repeats, 4))):
            t = []
            for j in range(times):
                a, b = (unit_vectors(m, d, 1000 * m + 2 * j + o, clusters=256, spread=0.5) for o in (0, 1))
                rows = [{"key": f"a{m}_{j}_{i}"} for i in range(m)]
                t.append(median_run(lambda: add_embeddings(folder, a, b, rows), 1)[0])
            took[m] = {"first": t[0], "median": float(np.median(t[1:])), "floor": offset_products([a, b])}
            keep(f"+{times} x {m} rows")
        t_compact = median_run(lambda: compact(folder), 1)[0]
        keep("compacted")
        serving = _serving(stages, unit_vectors(1000, d, 9, clusters=256, spread=0.5), max(repeats, 5))
    print(f"appends into a {n}-row IVF{lists},Flat folder (image + text; one publish each):")
    for m, t in took.items():
        print(f"  {m:>6} rows: first {t['first'] * 1e3:7.0f} ms (reads the banks), then median {t['median'] * 1e3:7.0f} ms; "
              f"their offsets' bare products {t['floor'] * 1e3:.0f} ms (scripts/gemm_floor.py)")
    print(f"  then `compact` (merges the appended shards): {t_compact:.1f} s")
    print(f"  single-query serving (1,000 queries a round, {max(repeats, 5)} interleaved rounds; QPS median, "
          f"ratio: median of the rounds' ratios to the built folder):")
    for stage, r in serving.items():
        print(f"    {stage:<18} {r['rows']:>7} rows, {r['shards']:>3} shards: " + "; ".join(
            f"{m} {r[m]['qps']:6.0f} QPS ({r[m]['ratio']:.2f}x) recall@10 {r[m]['recall']:.3f}" for m in ("clip", "bsap")))
    return {"appends": took, "serving": serving, "compact": t_compact}


def metadata(n: int, repeats: int) -> dict:
    """The metadata a build writes for n rows (stored schema and key checks, Parquet, full-text
    texts and tantivy index), given as a pyarrow Table and as dicts, against the bare Arrow
    conversion of the dicts and the bare Parquet write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrieval.store.files import save_parquet
    from retrieval.store.fts import row_texts, write_fts
    from retrieval.store.rows import rows_table

    dicts = [{"key": f"k{i}", "image_path": f"/photos/{i}.jpg", "caption": f"a photo number {i} of a thing",
              "year": 2000 + i % 25} for i in range(n)]
    table = pa.Table.from_pylist(dicts)
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        def ours(rows):
            t = rows_table(rows, n)
            save_parquet(Path(tmp) / "m.parquet", t, t.schema, (0, 0))
            return row_texts(t)

        got["bare_arrow"] = median_run(lambda: pa.Table.from_pylist(dicts), repeats)[0]
        got["bare_parquet"] = median_run(lambda: pq.write_table(table, Path(tmp) / "b.parquet"), repeats)[0]
        got["table"] = median_run(lambda: ours(table), repeats)[0]
        got["dicts"] = median_run(lambda: ours(dicts), repeats)[0]
        texts = row_texts(table)
        got["fts"] = median_run(lambda: write_fts(Path(tmp) / f"fts{time.perf_counter_ns()}", texts), repeats)[0]
    print(f"metadata of {n} rows (median of {repeats}): schema + key checks + Parquet + full-text texts "
          f"{got['table'] * 1e3:.0f} ms from a Table ({got['table'] / got['bare_parquet']:.2f}x the bare Parquet "
          f"write, {got['bare_parquet'] * 1e3:.0f} ms), {got['dicts'] * 1e3:.0f} ms from dicts "
          f"({got['dicts'] / got['bare_arrow']:.2f}x the bare Arrow conversion, {got['bare_arrow'] * 1e3:.0f} ms); "
          f"tantivy index of the texts {got['fts'] * 1e3:.0f} ms")
    return got


def json_manifest(folder: Path) -> dict:
    import json

    return json.loads((folder / "manifest.json").read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--bank", type=int, default=4096)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lists", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the build comparison (bare, ours, LanceDB)")
    ap.add_argument("--parts", default="offsets,build,appends,cli,where")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--cli-arch", default="ViT-B-32")
    ap.add_argument("--lancedb-python", default="/tmp/lancevenv/bin/python",
                    help="a Python with lancedb==0.40.0 installed, for --parts lance")
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    if "offsets" in parts:
        offsets(a.n, a.dim, a.bank, a.k, a.repeats)
    if "build" in parts:
        build(a.n, a.dim, a.lists, a.rounds, a.lancedb_python if "lance" in parts else None)
    elif "lance" in parts:
        got = lancedb_build(a.n, a.dim, a.lists, a.lancedb_python)
        if got is not None:
            print(f"LanceDB 0.40, {a.n} x {a.dim} image + text: create_table {got['table']:.1f} s, + IVF{a.lists}_FLAT "
                  f"(dot) on both columns {got['total']:.1f} s in total; add of 10k rows {got['add_10k'] * 1e3:.0f} ms")
    if "appends" in parts:
        appends(a.n, a.dim, a.lists, a.repeats)
    if "metadata" in parts:
        metadata(a.n, a.repeats)
    if "where" in parts:
        first_where(a.n, a.dim, a.lists, max(a.repeats, 5))
    if "cli" in parts:
        cli(max(a.repeats, 5), a.shared, a.cli_arch)


if __name__ == "__main__":
    main()
