"""A shard's full-text index: a tantivy index (Lucene-like, BM25 with block-max WAND pruning), one
immutable folder per shard.

``fts/fts_{k}/`` holds one tantivy segment over each row's text (its captions and the folder's chosen
text columns, joined) with the row number as a fast field: every row is a document, in row order
(rows without text are empty documents), unless no row of the shard has text: then it holds none.
It is written beside the shard under a temp name and renamed into place, never changed after:
deletes are the shard's tombstones, applied at query time; compaction writes new shards, with new
folders; ``retrieval migrate`` gives older folders theirs. Each of its files is listed in the
shard's manifest entry (``fts.files``: size, sha256, fingerprint) like the shard's other files, so
open, verify and the generation sweep cover them.

Analyzer (registered as ``retrieval`` on every open, tantivy does not store analyzers): split on
anything but letters and digits, tokens over 40 characters dropped, lower-cased, ASCII-folded
(``café`` = ``cafe``), no stemming and no stop words (literal words, like LanceDB's FTS with
``stem=False, remove_stop_words=False``). Chosen over SQLite FTS5 (docs/benchmarks.md "Keyword"):
FTS5 scores every matching row, so a common word over 200k captions took 35 ms in FTS5 itself;
tantivy prunes to the top k (0.1 ms).
"""
from __future__ import annotations

import os
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


def _as_text(col):
    """A column as one string per row, a missing or empty one null: strings as they are, lists of
    strings joined by newlines (in Arrow); other types through ``str`` (rare: numbers, structs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col
    elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
        items = type(col).from_arrays(col.offsets, pc.fill_null(col.values, ""), mask=col.is_null())
        text = pc.binary_join(items, "\n")
    else:
        text = pa.array([None if v is None else _text(v) for v in col.to_pylist()], pa.string())
    text = text.cast(pa.string())
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def row_texts(table, columns: Sequence[str] = DEFAULT_COLUMNS) -> list[str]:
    """The text each row of ``table`` (a pyarrow Table) is found by: its ``captions`` (all of them,
    when it has any) or else ``caption``, then the other ``columns`` it has, joined by newlines;
    at most ``MAX_TEXT`` characters."""
    import pyarrow.compute as pc

    names = set(table.column_names)
    parts = []
    for c in columns:
        if c == "caption" and "captions" in names:
            joined = _as_text(table.column("captions"))
            parts.append(joined if "caption" not in names else pc.coalesce(joined, _as_text(table.column("caption"))))
        elif c in names:
            parts.append(_as_text(table.column(c)))
    if not parts:
        return [""] * table.num_rows
    text = parts[0]
    for p in parts[1:]:  # joined pairwise: pyarrow 26's null_handling="skip" drops rows where all are null
        both = pc.binary_join_element_wise(text, p, "\n")
        text = pc.if_else(pc.is_null(text), p, pc.if_else(pc.is_null(p), text, both))
    return pc.utf8_slice_codeunits(pc.fill_null(text, ""), 0, MAX_TEXT).to_pylist()


def write_fts(folder: Path, texts: Iterable[str]) -> dict:
    """Write the full-text index of one shard at ``folder`` (built under a temp name, then renamed);
    returns {"docs": rows with text}. A shard none of whose rows has text gets an index of no
    documents (nothing could match; ~2 us a row saved: 0.4 s per 200k rows)."""
    import tantivy

    texts = list(texts)
    with atomic_dir(folder) as tmp:
        index = tantivy.Index(schema(), path=str(tmp))
        index.register_tokenizer(ANALYZER, analyzer())
        writer = index.writer(heap_size=64_000_000, num_threads=1)
        docs = 0
        for i, text in enumerate(texts if any(texts) else ()):
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
    """A tantivy index opened for search (the analyzer registered). tantivy takes a lock file in the
    index folder even to read; on a read-only folder (a read-only mount) it is opened through a
    private folder of links to its files instead (``_linked``)."""
    import tantivy

    folder = Path(folder)
    where = folder if os.access(folder, os.W_OK) else _linked(folder)
    index = tantivy.Index.open(str(where))
    index.register_tokenizer(ANALYZER, analyzer())
    return index


def _linked(folder: Path) -> Path:
    """A temporary folder (removed at exit) of symbolic links to ``folder``'s files but its lock files:
    tantivy reads the files through them (memory-mapped, nothing copied) and writes its lock there."""
    import atexit
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="retrieval-fts-"))
    atexit.register(shutil.rmtree, tmp, True)
    for p in folder.iterdir():
        if not p.name.endswith(".lock"):
            (tmp / p.name).symlink_to(p.resolve())
    return tmp


def fts_rows(folder: Path):
    """The documents of a full-text folder (None when unreadable)."""
    try:
        return int(open_fts(folder).searcher().num_docs)
    except (OSError, ValueError):
        return None
