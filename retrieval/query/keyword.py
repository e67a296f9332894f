"""Keyword search over the shards' full-text indexes (``store.fts``, tantivy), ranked by BM25 with the
document frequencies of the whole folder.

The query language is a small, safe one: words (``eiffel tower``: every word, in any order),
``"quoted phrases"``, a trailing ``*`` for a prefix (``bicyc*``), ``AND`` / ``OR`` / ``NOT`` and
parentheses; ``NOT`` binds tightest, then AND (also implied between neighbours), then OR. It is
parsed here into tantivy query objects, never handed to a query-string parser, so no field, range,
regex or boost syntax can be reached; a word holding punctuation (``SKU-123``) is the phrase of its
tokens. Words are analysed as the rows were (``store.fts.analyzer``). Bad syntax (an unclosed
quote, ``a OR``) is one :class:`KeywordError` line.

Scores are tantivy's BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5))) with N and df
summed over every shard: each term's (or phrase's) score is boosted by idf(whole folder) / idf(its
shard), so a rare word ranks alike whichever shard holds it; the length normalisation uses the
shard's own mean length (tantivy's, per index), and a prefix word (expanded to at most 50 words,
tantivy's default) scores a constant 1.
Deleted rows count until compaction, as in Lucene. Each shard answers its top hits with tantivy's
pruning; rows the selection excludes (deleted, ``where``) are dropped and more are fetched until k
allowed rows are found or none are left.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.fts import analyzer, open_fts
from .selection import Selection

MAX_CHARS = 2000
_TOKEN = re.compile(r'\s*(?:(")|(\()|(\))|([^\s"()]+))')


class KeywordError(ValueError):
    """A keyword query that cannot run (bad syntax, too long, no words)."""


@dataclass(frozen=True)
class Node:
    kind: str                 # "words" | "prefix" | "and" | "or" | "not"
    text: str = ""            # the words (a phrase when they analyse into several tokens)
    children: tuple = ()


def _lex(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        quote, opened, closed, word = m.groups()
        pos = m.end()
        if quote:
            end = text.find('"', pos)
            if end < 0:
                raise KeywordError("bad keyword query: a quote is not closed")
            phrase, pos = text[pos:end], end + 1
            prefix = pos < len(text) and text[pos] == "*"
            pos += prefix
            out.append(("prefix" if prefix else "words", phrase))
        elif opened or closed:
            out.append(("(" if opened else ")", ""))
        elif word in ("AND", "OR", "NOT"):
            out.append((word, ""))
        elif word.endswith("*") and word.rstrip("*"):
            out.append(("prefix", word.rstrip("*")))
        else:
            out.append(("words", word))
    return out


class _Parser:
    """expr := and (OR and)* ; and := not ([AND] not)* ; not := primary (NOT primary)* ;
    primary := words | prefix | ( expr )"""

    def __init__(self, tokens):
        self.t, self.i = tokens, 0

    def peek(self):
        return self.t[self.i][0] if self.i < len(self.t) else None

    def take(self):
        self.i += 1
        return self.t[self.i - 1]

    def expr(self) -> Node:
        parts = [self.conj()]
        while self.peek() == "OR":
            self.take()
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else Node("or", children=tuple(parts))

    def conj(self) -> Node:
        parts = [self.neg()]
        while self.peek() in ("AND", "words", "prefix", "("):
            if self.peek() == "AND":
                self.take()
            parts.append(self.neg())
        return parts[0] if len(parts) == 1 else Node("and", children=tuple(parts))

    def neg(self) -> Node:
        node = self.primary()
        while self.peek() == "NOT":
            self.take()
            node = Node("and", children=(node, Node("not", children=(self.primary(),))))
        return node

    def primary(self) -> Node:
        kind = self.peek()
        if kind in ("words", "prefix"):
            return Node(kind, self.take()[1])
        if kind == "(":
            self.take()
            node = self.expr()
            if self.peek() != ")":
                raise KeywordError("bad keyword query: a parenthesis is not closed")
            self.take()
            return node
        what = "the end" if kind is None else repr(kind)
        raise KeywordError(f"bad keyword query: a word was expected before {what}")


def parse(text: str) -> Node:
    """The query tree of ``text`` in the safe subset (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise KeywordError("the keyword query is empty")
    if len(text) > MAX_CHARS:
        raise KeywordError(f"a keyword query is at most {MAX_CHARS} characters, got {len(text)}")
    p = _Parser(_lex(text.strip()))
    node = p.expr()
    if p.peek() is not None:
        raise KeywordError("bad keyword query: a parenthesis closes nothing" if p.peek() == ")"
                           else f"bad keyword query: unexpected {p.peek()!r}")
    if not _positive(node):
        raise KeywordError("the keyword query has no words to find (only NOT parts, or no letters or digits)")
    return node


_LOCAL = threading.local()


def tokens(text: str) -> list[str]:
    """``text`` analysed as the rows were."""
    a = getattr(_LOCAL, "analyzer", None)
    if a is None:
        a = _LOCAL.analyzer = analyzer()
    return a.analyze(text)


def _positive(node: Node) -> bool:
    if node.kind in ("words", "prefix"):
        return bool(tokens(node.text))
    if node.kind == "not":
        return False
    return any(_positive(c) for c in node.children)


def idf(df: int, n: int) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


class ShardText:
    """One shard's full-text index, opened for search."""

    def __init__(self, folder):
        self.index = open_fts(folder)
        self.searcher = self.index.searcher()
        self.schema = self.index.schema
        self.docs = int(self.searcher.num_docs)

    def df(self, token: str) -> int:
        return int(self.searcher.doc_freq("text", token))


class KeywordIndex:
    """BM25 keyword search over the non-empty shards of an opened folder (``query.shards.ShardSet``)."""

    def __init__(self, shard_set):
        self.shards = shard_set
        self.available = all(s.get("fts") for s in shard_set.shards)
        self._open: dict[int, ShardText] = {}
        self._df: dict[str, int] = {}
        self._lock = threading.Lock()

    def _shard(self, i: int) -> ShardText:
        with self._lock:
            if i not in self._open:
                self._open[i] = ShardText(self.shards.folder / self.shards.shards[i]["fts"]["dir"])
            return self._open[i]

    @property
    def docs(self) -> int:
        """N: every row written (rows without text count, as their empty documents do; a shard with
        no text at all holds no documents but counts its rows)."""
        return sum(self._shard(i).docs or s["rows"] for i, s in enumerate(self.shards.shards))

    def df(self, token: str) -> int:
        """Rows holding ``token`` across every shard (cached: shards are immutable)."""
        with self._lock:
            got = self._df.get(token)
        if got is None:
            got = sum(self._shard(i).df(token) for i in range(len(self.shards.shards)))
            with self._lock:
                if len(self._df) > 100_000:
                    self._df.clear()
                self._df[token] = got
        return got

    def _query(self, node: Node, shard: ShardText, n: int):
        """The tantivy query of ``node`` for ``shard``, each term boosted to the folder's idf."""
        import tantivy

        q = tantivy.Query
        if node.kind == "words":
            toks = tokens(node.text)
            local = sum(idf(shard.df(t), shard.docs) for t in toks)
            boost = sum(idf(self.df(t), n) for t in toks) / local if local > 0 else 1.0
            base = q.term_query(shard.schema, "text", toks[0]) if len(toks) == 1 else \
                q.phrase_query(shard.schema, "text", toks)
            return q.boost_query(base, boost)
        if node.kind == "prefix":
            return q.phrase_prefix_query(shard.schema, "text", tokens(node.text))
        occur = tantivy.Occur
        parts = []
        for c in node.children:
            if c.kind == "not":
                parts.append((occur.MustNot, self._query(c.children[0], shard, n)))
            elif _positive(c):
                parts.append((occur.Must if node.kind == "and" else occur.Should, self._query(c, shard, n)))
        return q.boolean_query(parts)

    def search(self, texts: list[str], k: int, selection: Optional[Selection] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (BM25 scores, global ids) per query text; ids -1 (scores -inf) where fewer rows match."""
        if not self.available:
            raise IndexFolderError(f"{self.shards.folder} has no full-text index (built before keyword search); run "
                                   f"`retrieval migrate {self.shards.folder}` once to add it")
        out_s = np.full((len(texts), k), -np.inf, np.float32)
        out_i = np.full((len(texts), k), -1, np.int64)
        nodes = [parse(t) for t in texts]
        n = self.docs
        for qi, node in enumerate(nodes):
            s, ids = self._one(node, selection, k, n)
            m = min(k, len(ids))
            if m:
                top = np.lexsort((ids, -s))[:m]
                out_s[qi, :m], out_i[qi, :m] = s[top], ids[top]
        return out_s, out_i

    def _one(self, node: Node, selection: Optional[Selection], k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each shard's k best rows the selection allows (fetching more while hits are excluded)."""
        scores, ids = [], []
        for i, s in enumerate(self.shards.shards):
            if selection is not None and selection.counts[i] == 0:
                continue
            shard = self._shard(i)
            query = self._query(node, shard, n)
            mask = None if selection is None else selection.masks[i]
            fetch = k if mask is None else min(max(2 * k, 64), s["rows"])
            while True:
                res = shard.searcher.search(query, fetch, count=True)
                rows = np.array(shard.searcher.fast_field_values("row", [h[1] for h in res.hits]) if res.hits else [],
                                np.int64)
                sc = np.array([h[0] for h in res.hits], np.float32)
                if mask is not None and len(rows):
                    keep = mask[rows]
                    rows, sc = rows[keep], sc[keep]
                if len(rows) >= k or fetch >= res.count:
                    break
                fetch = min(fetch * 4, res.count)
            scores.append(sc[:k])
            ids.append(s["offset"] + rows[:k])
        if not scores:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return np.concatenate(scores), np.concatenate(ids)
