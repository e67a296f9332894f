"""Keyword search: ours (a tantivy index per shard, BM25 with the whole folder's document frequencies)
vs tantivy bare (one index, its own query parser) vs SQLite FTS5 bare (one table, ``ORDER BY rank``:
the alternative library) vs LanceDB's full-text index, on the same captions; and hybrid (keyword +
CLIP fusion) latency vs plain search.

Captions: --n captions made from the Flickr fixture's 5,000 real ones (a random caption with two of
its words swapped for random words of the whole vocabulary; 1 % get a product code ``SKU-NNNNNN``).
Queries span document frequencies: a rare word, a code, mid and common words, two words, a phrase,
and a whole sentence. Each latency is the median of --repeats runs after one untimed run, top 10.
Build time is the full-text index alone: ours writes one index per --shard-size rows.

LanceDB is not a dependency of this project: install it in its own venv
  python3 -m venv /tmp/lancevenv && /tmp/lancevenv/bin/pip install lancedb==0.40.0
and pass --lancedb-python /tmp/lancevenv/bin/python (skipped when absent). LanceDB runs twice: with
our tokenization (no stemming, stop words kept) and with its defaults (stemming, stop words removed).

Hybrid: --n rows of --dim random unit vectors (IVF shards) with the same captions; plain
``Index.search(q, 10)`` vs ``Index.search(q, 10, text_match=...)`` (RRF over the top 100 of each).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import timed  # noqa: E402

QUERIES = {"rare word": None, "product code": None, "mid word": None, "common word": "dog",
           "two words": "dog beach", "phrase": '"on the beach"', "sentence": "a dog runs on the beach"}

LANCE = r'''
import json, sys, time, statistics, tempfile
import lancedb, pyarrow as pa
texts = json.load(open(sys.argv[1])); queries = json.loads(sys.argv[2]); repeats = int(sys.argv[3])
out = {}
for name, kw in (("ours-like", dict(stem=False, remove_stop_words=False, with_position=True)), ("defaults", dict(with_position=True))):
    db = lancedb.connect(tempfile.mkdtemp())
    tbl = db.create_table("t", pa.table({"id": list(range(len(texts))), "text": texts}))
    t0 = time.perf_counter(); tbl.create_fts_index("text", **kw); build = time.perf_counter() - t0
    lat = {}
    for q, text in queries.items():
        tbl.search(text, query_type="fts").limit(10).to_arrow()
        times = []
        for _ in range(repeats):
            t = time.perf_counter(); tbl.search(text, query_type="fts").limit(10).to_arrow(); times.append(time.perf_counter() - t)
        lat[q] = statistics.median(times)
    out[name] = {"build_s": build, "latency": lat}
print(json.dumps(out))
'''


def make_captions(shared: Path, n: int, seed: int = 0) -> list[str]:
    import csv

    with open(shared / "data" / "flickr8k_1k" / "captions.csv", newline="") as f:
        real = [r["caption"].strip() for r in csv.DictReader(f)]
    vocab = sorted({w for c in real for w in c.split() if w.isalpha()})
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = real[int(rng.integers(len(real)))].split()
        for _ in range(2):
            words[int(rng.integers(len(words)))] = vocab[int(rng.integers(len(vocab)))]
        if i % 100 == 37:
            words.append(f"SKU-{i:06d}")
        out.append(" ".join(words))
    return out


def pick_queries(texts: list[str]) -> dict[str, str]:
    from collections import Counter

    df = Counter(w.lower() for t in texts for w in set(t.split()) if w.isalpha())
    by = sorted(df.items(), key=lambda kv: (kv[1], kv[0]))
    q = dict(QUERIES)
    q["rare word"] = next(w for w, c in by if c >= 5)
    q["mid word"] = next(w for w, c in by if c >= len(texts) // 200)
    q["product code"] = "SKU-000137"
    return q


def fts5_match(q: str) -> str:
    """The FTS5 form of one of the benchmark's queries (words quoted, a phrase kept)."""
    if q.startswith('"'):
        return q
    return " AND ".join('"' + w + '"' for w in q.split())


def bare_fts5(texts: list[str], queries: dict, repeats: int, work: Path) -> dict:
    path = work / "bare.sqlite"
    t0 = time.perf_counter()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("CREATE VIRTUAL TABLE fts USING fts5(text, tokenize='unicode61 remove_diacritics 2')")
    con.executemany("INSERT INTO fts(rowid, text) VALUES (?, ?)", enumerate(texts))
    con.execute("INSERT INTO fts(fts) VALUES ('optimize')")
    con.commit()
    build = time.perf_counter() - t0
    lat = {name: timed(lambda m=fts5_match(q): con.execute(
        "SELECT rowid, bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT 10", [m]).fetchall(), repeats)
        for name, q in queries.items()}
    return {"build_s": build, "latency": lat, "bytes": path.stat().st_size}


def bare_tantivy(texts: list[str], queries: dict, repeats: int, work: Path) -> dict:
    import tantivy

    from retrieval.store.fts import ANALYZER, analyzer, schema

    (work / "tv").mkdir()
    t0 = time.perf_counter()
    index = tantivy.Index(schema(), path=str(work / "tv"))
    index.register_tokenizer(ANALYZER, analyzer())
    writer = index.writer(heap_size=64_000_000, num_threads=1)
    for i, t in enumerate(texts):
        doc = tantivy.Document()
        doc.add_text("text", t)
        doc.add_unsigned("row", i)
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
    build = time.perf_counter() - t0
    index.reload()
    searcher = index.searcher()
    lat = {}
    for name, q in queries.items():
        parsed = index.parse_query(q.replace("-", " "), ["text"], conjunction_by_default=True)
        lat[name] = timed(lambda p=parsed: searcher.fast_field_values(
            "row", [h[1] for h in searcher.search(p, 10).hits]), repeats)
    return {"build_s": build, "latency": lat, "bytes": sum(p.stat().st_size for p in (work / "tv").iterdir())}


def ours(texts: list[str], queries: dict, repeats: int, shard_size: int, dim: int, work: Path) -> dict:
    from retrieval import build_from_embeddings, open_index
    from retrieval.store.fts import write_fts
    from synthetic import unit_vectors

    t0 = time.perf_counter()
    for i in range(0, len(texts), shard_size):
        write_fts(work / "fts" / f"fts_{i}", texts[i:i + shard_size])
    build = time.perf_counter() - t0
    sizes = sum(p.stat().st_size for p in (work / "fts").rglob("*") if p.is_file())
    x = unit_vectors(len(texts), dim, 1, clusters=256, spread=0.5)
    rows = [{"key": str(i), "image_path": "", "caption": t} for i, t in enumerate(texts)]
    build_from_embeddings(work / "idx", x, x, {"arch": "synthetic"}, rows, shard_size=shard_size,
                          index_key="IVF256,Flat", bias_bank=None)
    idx = open_index(work / "idx", search_params="nprobe=16")
    lat = {name: timed(lambda q=q: idx.keyword_search(q, 10), repeats) for name, q in queries.items()}
    qv = unit_vectors(len(queries), dim, 2, clusters=256, spread=0.5)
    plain = {name: timed(lambda v=qv[j:j + 1]: idx.search(v, 10), repeats) for j, name in enumerate(queries)}
    hybrid = {name: timed(lambda v=qv[j:j + 1], q=q: idx.search(v, 10, text_match=q), repeats)
              for j, (name, q) in enumerate(queries.items())}
    return {"build_s": build, "latency": lat, "bytes": sizes, "plain": plain, "hybrid": hybrid,
            "matches": {name: int((idx.keyword_search(q, len(texts))[1] >= 0).sum()) for name, q in queries.items()}}


def encode_time(texts: list[str], repeats: int) -> float:
    """Median seconds to encode one query text with ViT-B-32's text tower (random weights: the same cost)."""
    from retrieval import load_model
    from retrieval.query.encode import encode_texts

    clip = load_model("ViT-B-32", "random", device="cpu")
    return statistics.median(timed(lambda t=t: encode_texts(clip, [t]), repeats) for t in texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(HERE.parent.parent / "shared"))
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--lancedb-python", default="/tmp/lancevenv/bin/python")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-keyword-"))
    texts = make_captions(Path(a.shared), a.n)
    queries = pick_queries(texts)
    res = {"ours": ours(texts, queries, a.repeats, a.shard_size, a.dim, work),
           "tantivy bare": bare_tantivy(texts, queries, a.repeats, work),
           "SQLite FTS5 bare": bare_fts5(texts, queries, a.repeats, work)}
    if Path(a.lancedb_python).exists():
        (work / "texts.json").write_text(json.dumps(texts))
        r = subprocess.run([a.lancedb_python, "-c", LANCE, str(work / "texts.json"), json.dumps(queries), str(a.repeats)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if r.returncode == 0:
            for name, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
                res[f"LanceDB {name}"] = v
        else:
            print("LanceDB failed:", r.stderr[-1000:])
    sides = list(res)
    print(f"\n{a.n:,} captions; full-text index build (s): " + ", ".join(f"{s} {res[s]['build_s']:.2f}" for s in sides))
    print("  bytes: " + ", ".join(f"{s} {res[s]['bytes'] / 1e6:.1f} MB" for s in sides if "bytes" in res[s]))
    print(f"\nkeyword query latency, top 10 (ms, median of {a.repeats})")
    print(f"  {'query':<34}{'matches':>9}" + "".join(f"{s:>22}" for s in sides))
    for name, q in queries.items():
        print(f"  {name + ': ' + q:<34}{res['ours']['matches'][name]:>9}"
              + "".join(f"{res[s]['latency'][name] * 1e3:>22.2f}" for s in sides))
    o = res["ours"]
    enc = encode_time(list(queries.values()), a.repeats) if a.dim == 512 else 0.0
    print(f"\nhybrid vs plain search, {a.n:,} x {a.dim} IVF, k=10 (ms, median of {a.repeats}); end to end adds the "
          f"query's text encoding (ViT-B-32 text tower, CPU: {enc * 1e3:.1f} ms)")
    print(f"  {'query':<34}{'plain':>8}{'hybrid':>8}{'ratio':>7}   end to end: {'plain':>7}{'hybrid':>8}{'ratio':>7}")
    for name, q in queries.items():
        p, h = o["plain"][name], o["hybrid"][name]
        print(f"  {name + ': ' + q:<34}{p * 1e3:8.2f}{h * 1e3:8.2f}{h / p:6.2f}x   {'':>12}{(enc + p) * 1e3:7.2f}"
              f"{(enc + h) * 1e3:8.2f}{(enc + h) / (enc + p):6.2f}x")


if __name__ == "__main__":
    main()
