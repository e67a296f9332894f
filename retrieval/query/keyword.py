"""Keyword search over the shards' full-text files (``store.fts``), ranked by BM25 with the statistics
of the whole folder, not of each shard.

The query language is a safe subset of FTS5's: words (``eiffel tower``: every word, in any order; an
``AND`` is implied between neighbours, groups included),
``"quoted phrases"``, a trailing ``*`` for a prefix (``bicyc*``), ``AND`` / ``OR`` / ``NOT`` and
parentheses. Anything else inside a word (``SKU-123``, ``caption:x``, ``NEAR``) is taken literally: each
word is passed to FTS5 as a quoted string, so no column filter or other FTS5 function can be reached.
Words are tokenized as the index was (``unicode61``: case and diacritics folded, split on
punctuation), so ``SKU-123`` finds the phrase ``sku 123``. Bad syntax (an unclosed quote, ``a OR``) is
one :class:`KeywordError` line.

Scores are Okapi BM25 (k1 = 1.2, b = 0.75; idf = ln(1 + (N - df + 0.5) / (df + 0.5))) over every query
token a row contains, with N, df and the mean row length summed over all shards (deleted rows count
until compaction, as in Lucene). Every row that matches and the selection allows (live, ``where``) is
scored: the top k are exact.
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.fts import TOKENIZER, read_lengths
from .selection import Selection

K1, B = 1.2, 0.75
MAX_CHARS = 2000
TIMEOUT_S = 10.0
_TOKEN = re.compile(r'\s*(?:(")|(\()|(\))|([^\s"()]+))')


class KeywordError(ValueError):
    """A keyword query that cannot run (bad syntax, too long, no full-text index)."""


@dataclass
class Parsed:
    match: str                                   # the FTS5 MATCH expression
    words: list = field(default_factory=list)    # (text, prefix?) of every word and phrase, for scoring


def parse(text: str) -> Parsed:
    """The FTS5 expression of a query in the safe subset (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise KeywordError("the keyword query is empty")
    if len(text) > MAX_CHARS:
        raise KeywordError(f"a keyword query is at most {MAX_CHARS} characters, got {len(text)}")
    out, words, pos, depth = [], [], 0, 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        quote, opened, closed, word = m.groups()
        pos = m.end()
        starts = quote or opened or (word and word not in ("AND", "OR", "NOT"))
        if starts and out and (out[-1] == ")" or out[-1].startswith('"')):
            out.append("AND")  # FTS5 joins only phrases implicitly: "a (b OR c)" needs its AND
        if quote:
            end = text.find('"', pos)
            if end < 0:
                raise KeywordError("bad keyword query: a quote is not closed")
            phrase, pos = text[pos:end], end + 1
            prefix = pos < len(text) and text[pos] == "*"
            pos += prefix
            out.append(_quoted(phrase) + ("*" if prefix else ""))
            words.append((phrase, prefix))
        elif opened or closed:
            depth += 1 if opened else -1
            if depth < 0:
                raise KeywordError("bad keyword query: a parenthesis closes nothing")
            out.append("(" if opened else ")")
        elif word in ("AND", "OR", "NOT"):
            out.append(word)
        else:
            prefix = word.endswith("*") and len(word.rstrip("*")) > 0
            core = word.rstrip("*") if prefix else word
            out.append(_quoted(core) + ("*" if prefix else ""))
            words.append((core, prefix))
    if depth:
        raise KeywordError("bad keyword query: a parenthesis is not closed")
    if not words:
        raise KeywordError("the keyword query has no words")
    parsed = Parsed(" ".join(out), words)
    shared_tokenizer().check(parsed.match)
    return parsed


def _quoted(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


class Tokenizer:
    """The index's own tokenizer (an in-memory FTS5 table), so query words fold as the rows did."""

    def __init__(self):
        self.con = sqlite3.connect(":memory:", check_same_thread=False)
        self.con.execute(f"CREATE VIRTUAL TABLE q USING fts5(text, tokenize='{TOKENIZER}')")
        self.con.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, q, 'instance')")
        self.lock = threading.Lock()

    def check(self, match: str) -> None:
        """KeywordError when FTS5 cannot parse ``match`` (``a OR``, ``NOT x`` alone)."""
        with self.lock:
            try:
                self.con.execute("SELECT rowid FROM q WHERE q MATCH ?", [match]).fetchall()
            except sqlite3.OperationalError as e:
                raise KeywordError(f"bad keyword query: {str(e).removeprefix('fts5: ')}") from None

    def tokens(self, text: str) -> list[str]:
        with self.lock:
            self.con.execute("DELETE FROM q")
            self.con.execute("INSERT INTO q(rowid, text) VALUES (1, ?)", [text])
            return [t for t, in self.con.execute("SELECT term FROM temp.v ORDER BY offset")]


_SHARED: list = []


def shared_tokenizer() -> Tokenizer:
    """The process's one query tokenizer (and syntax checker)."""
    if not _SHARED:
        _SHARED.append(Tokenizer())
    return _SHARED[0]


def _next_prefix(p: str) -> str:
    return p[:-1] + chr(ord(p[-1]) + 1)


class ShardText:
    """One shard's FTS file, opened read-only (immutable: no locks), one query at a time."""

    def __init__(self, path):
        self.con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        self.con.execute("CREATE VIRTUAL TABLE temp.inst USING fts5vocab(main, fts, 'instance')")
        self.con.execute("CREATE VIRTUAL TABLE temp.rows USING fts5vocab(main, fts, 'row')")
        self.lengths = read_lengths(self.con)
        self.lock = threading.Lock()

    def run(self, match: str, terms: list[tuple[str, bool]], deadline: float):
        """(matching rows, {term: (rows, tf)}, {term: df}) of one query."""
        def stop():
            return 1 if time.monotonic() > deadline else 0

        with self.lock:
            self.con.set_progress_handler(stop, 10_000)
            try:
                rows = np.array([r for r, in self.con.execute("SELECT rowid FROM fts WHERE fts MATCH ?", [match])],
                                np.int64)
                tf, df = {}, {}
                if len(rows):
                    for term, prefix in terms:
                        where = "term >= ? AND term < ?" if prefix else "term = ?"
                        args = [term, _next_prefix(term)] if prefix else [term]
                        for t, n in self.con.execute(f"SELECT term, doc FROM temp.rows WHERE {where}", args):
                            df[t] = n
                        for t, doc, n in self.con.execute(
                                f"SELECT term, doc, count(*) FROM temp.inst WHERE {where} GROUP BY term, doc", args):
                            tf.setdefault(t, ([], []))
                            tf[t][0].append(doc)
                            tf[t][1].append(n)
                out = {}
                for t, (d, n) in tf.items():
                    d, n = np.array(d, np.int64), np.array(n, np.float64)
                    order = np.argsort(d, kind="stable")
                    out[t] = (d[order], n[order])
                return rows, out, df
            finally:
                self.con.set_progress_handler(None, 0)


class KeywordIndex:
    """BM25 keyword search over the non-empty shards of an opened folder (``query.shards.ShardSet``)."""

    def __init__(self, shard_set):
        self.shards = shard_set
        missing = [s["id"] for s in shard_set.shards if "fts" not in s["files"]]
        self.available = not missing
        self.docs = sum(s.get("fts", {}).get("docs", 0) for s in shard_set.shards)
        tokens = sum(s.get("fts", {}).get("tokens", 0) for s in shard_set.shards)
        self.avgdl = tokens / self.docs if self.docs else 1.0
        self._open: dict[int, ShardText] = {}
        self._lock = threading.Lock()

    def _shard(self, i: int) -> ShardText:
        with self._lock:
            if i not in self._open:
                self._open[i] = ShardText(self.shards.path(self.shards.shards[i], "fts"))
            return self._open[i]

    def terms(self, parsed: Parsed) -> list[tuple[str, bool]]:
        """The index tokens of the query's words ((token, prefix?); a prefix word's last token is)."""
        out = []
        for text, prefix in parsed.words:
            toks = shared_tokenizer().tokens(text)
            out += [(t, prefix and j == len(toks) - 1) for j, t in enumerate(toks)]
        return list(dict.fromkeys(out))

    def search(self, texts: list[str], k: int, selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (BM25 scores, global ids) per query text; ids -1 (scores -inf) where fewer rows match."""
        if not self.available:
            raise IndexFolderError(f"{self.shards.folder} has no full-text files (built before keyword search); run "
                                   f"`retrieval migrate {self.shards.folder}` once to add them")
        out_s = np.full((len(texts), k), -np.inf, np.float32)
        out_i = np.full((len(texts), k), -1, np.int64)
        for qi, text in enumerate(texts):
            s, ids = self._one(parse(text), selection)
            n = min(k, len(ids))
            if n:
                top = np.lexsort((ids, -s))[:n]
                out_s[qi, :n], out_i[qi, :n] = s[top], ids[top]
        return out_s, out_i

    def _one(self, parsed: Parsed, selection: Optional[Selection]) -> tuple[np.ndarray, np.ndarray]:
        if not self.shards.shards:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        terms = self.terms(parsed)
        deadline = time.monotonic() + TIMEOUT_S
        parts, df = [], {}
        for i, s in enumerate(self.shards.shards):
            if selection is not None and selection.counts[i] == 0:
                continue
            try:
                rows, tf, shard_df = self._shard(i).run(parsed.match, terms, deadline)
            except sqlite3.OperationalError as e:
                if time.monotonic() > deadline:
                    raise KeywordError(f"the keyword query took longer than {TIMEOUT_S:.0f} s") from None
                raise KeywordError(f"bad keyword query: {str(e).removeprefix('fts5: ')}") from None
            for t, n in shard_df.items():
                df[t] = df.get(t, 0) + n
            mask = None if selection is None else selection.masks[i]
            if mask is not None and len(rows):
                rows = rows[mask[rows]]
            if len(rows):
                parts.append((i, rows, tf))
        scores, ids = [], []
        for i, rows, tf in parts:
            score = np.zeros(len(rows))
            dl = self._open[i].lengths[rows].astype(np.float64)
            norm = K1 * (1 - B + B * dl / self.avgdl)
            for t, (docs, n) in tf.items():
                idf = np.log(1 + (self.docs - df[t] + 0.5) / (df[t] + 0.5))
                pos = np.searchsorted(docs, rows)
                hit = (pos < len(docs)) & (docs[np.minimum(pos, len(docs) - 1)] == rows)
                f = np.where(hit, n[np.minimum(pos, len(docs) - 1)], 0.0)
                score += idf * f * (K1 + 1) / (f + norm)
            scores.append(score.astype(np.float32))
            ids.append(self.shards.shards[i]["offset"] + rows)
        if not scores:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return np.concatenate(scores), np.concatenate(ids)
