"""A shard's full-text index: a tantivy index (Lucene-like, BM25 with block-max WAND pruning), one
immutable folder per shard.

``fts/fts_{k}/`` holds one tantivy segment over each row's text (its captions and the folder's chosen
text columns, joined) with the row number as a fast field: every row is a document, in row order
(rows without text are empty documents). It is written beside the shard under a temp name and
renamed into place, never changed after: deletes are the shard's tombstones, applied at query
time; compaction writes new shards, with new folders; ``retrieval migrate`` gives older folders
theirs. Each of its files is listed in the shard's manifest entry (``fts.files``: size, sha256,
fingerprint) like the shard's other files, so open, verify and the generation sweep cover them.

Analyzer (registered as ``retrieval`` on every open, tantivy does not store analyzers): split on
anything but letters and digits, tokens over 40 characters dropped, lower-cased, ASCII-folded
(``café`` = ``cafe``), no stemming and no stop words (literal words, like LanceDB's FTS with
``stem=False, remove_stop_words=False``). Chosen over SQLite FTS5 (docs/benchmarks.md "Keyword"):
FTS5 scores every matching row, so a common word over 200k captions took 35 ms in FTS5 itself;
tantivy prunes to the top k (0.1 ms).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .atomic import atomic_dir

ANALYZER = "retrieval"
DEFAULT_COLUMNS = ("caption",)
MAX_TEXT = 64 << 10  # characters of one row's text that are indexed
META_LOCK = ".tantivy-meta.lock"  # created by tantivy when it opens an index (kept, listed, empty)


def analyzer():
    """The text analyzer of every full-text index and every keyword query."""
    import tantivy

    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.ascii_fold()).build())


def schema():
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("text", stored=False, tokenizer_name=ANALYZER, index_option="position")
    sb.add_unsigned_field("row", stored=False, indexed=False, fast=True)
    return sb.build()


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


def write_fts(folder: Path, texts: Iterable[str]) -> dict:
    """Write the full-text index of one shard at ``folder`` (built under a temp name, then renamed);
    returns {"docs": rows with text}."""
    import tantivy

    with atomic_dir(folder) as tmp:
        index = tantivy.Index(schema(), path=str(tmp))
        index.register_tokenizer(ANALYZER, analyzer())
        writer = index.writer(heap_size=64_000_000, num_threads=1)
        docs = 0
        for i, text in enumerate(texts):
            doc = tantivy.Document()
            doc.add_text("text", text or "")
            doc.add_unsigned("row", i)
            writer.add_document(doc)
            docs += bool(text)
        writer.commit()
        writer.wait_merging_threads()
        del writer, index
        (tmp / ".tantivy-writer.lock").unlink(missing_ok=True)
        (tmp / META_LOCK).touch()
    return {"docs": docs}


def fts_files(out: Path, rel_folder: str) -> list[str]:
    """The relative paths of the files of a shard's full-text folder."""
    return sorted(f"{rel_folder}/{p.name}" for p in (Path(out) / rel_folder).iterdir() if p.is_file())


def open_fts(folder: Path):
    """A tantivy index opened for search (the analyzer registered)."""
    import tantivy

    index = tantivy.Index.open(str(folder))
    index.register_tokenizer(ANALYZER, analyzer())
    return index


def fts_rows(folder: Path):
    """The documents of a full-text folder (None when unreadable)."""
    try:
        return int(open_fts(folder).searcher().num_docs)
    except (OSError, ValueError):
        return None
