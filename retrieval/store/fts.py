"""A shard's full-text index: SQLite FTS5 (the standard library's), one immutable file per shard.

``fts/fts_{k}.sqlite`` holds a contentless FTS5 table over each row's text (its captions and the
folder's chosen text columns, joined), keyed by the row number, and the row lengths in tokens; the
shard's manifest entry records it like its other files (size, sha256, fingerprint) and its totals
(``fts``: rows with text, tokens), which global BM25 statistics are summed from at query time
(``query.keyword``). It is written with the shard and never changes: deletes are the shard's
tombstones, applied at query time; compaction writes new shards, with new files; ``retrieval
migrate`` gives folders built before it their files. Tokenizer: ``unicode61`` with diacritics
removed and case folded, no stemming (literal words, as LanceDB's default full-text index).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .atomic import atomic_path

TOKENIZER = "unicode61 remove_diacritics 2"
DEFAULT_COLUMNS = ("caption",)
MAX_TEXT = 64 << 10  # characters of one row's text that are indexed


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, np.ndarray)):
        return "\n".join(_text(x) for x in v)
    return str(v)


def row_texts(rows, columns: Sequence[str] = DEFAULT_COLUMNS) -> list[str]:
    """The text each row is found by: its ``captions`` (all of them) or else ``caption``, then the
    other ``columns`` it has, joined by newlines. ``rows``: metadata dicts or a pyarrow Table."""
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        names = set(rows.column_names)
        cols = {c: rows.column(c).to_pylist() for c in {"caption", "captions", *columns} if c in names}
        rows = [{c: v[i] for c, v in cols.items()} for i in range(rows.num_rows)]
    out = []
    for r in rows:
        parts = []
        for c in columns:
            if c == "caption" and r.get("captions"):
                parts.append(_text(r["captions"]))
            elif r.get(c) is not None:
                parts.append(_text(r.get(c)))
        out.append("\n".join(p for p in parts if p)[:MAX_TEXT])
    return out


def write_fts(path: Path, texts: Iterable[str]) -> dict:
    """Write the FTS file of one shard (atomically); returns its totals {"docs", "tokens"}."""
    with atomic_path(path) as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=OFF")
            con.execute("PRAGMA synchronous=OFF")
            con.execute(f"CREATE VIRTUAL TABLE fts USING fts5(text, content='', tokenize='{TOKENIZER}')")
            texts = list(texts)
            con.executemany("INSERT INTO fts(rowid, text) VALUES (?, ?)", ((i, t) for i, t in enumerate(texts) if t))
            con.execute("CREATE VIRTUAL TABLE temp.inst USING fts5vocab(main, fts, 'instance')")
            lengths = np.zeros(len(texts), np.int32)
            got = con.execute("SELECT doc, count(*) FROM temp.inst GROUP BY doc").fetchall()
            if got:
                docs, counts = np.array(got, np.int64).T
                lengths[docs] = counts
            con.execute("CREATE TABLE stats(key TEXT PRIMARY KEY, value)")
            con.executemany("INSERT INTO stats VALUES (?, ?)", [("rows", len(texts)), ("lengths", lengths.tobytes())])
            con.execute("INSERT INTO fts(fts) VALUES ('optimize')")
            con.commit()
        finally:
            con.close()
    return {"docs": int((lengths > 0).sum()), "tokens": int(lengths.sum())}


def read_lengths(con: sqlite3.Connection) -> np.ndarray:
    """Each row's length in tokens (0: no text) from an open FTS file."""
    return np.frombuffer(con.execute("SELECT value FROM stats WHERE key = 'lengths'").fetchone()[0], np.int32)


def fts_rows(path: Path) -> Optional[int]:
    """The rows an FTS file was written for (None when unreadable)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            return int(con.execute("SELECT value FROM stats WHERE key = 'rows'").fetchone()[0])
        finally:
            con.close()
    except (sqlite3.Error, TypeError):
        return None
