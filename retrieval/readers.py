"""Streaming corpus readers: image folder + .txt captions, Parquet/CSV manifest, WebDataset tars.

Every reader yields :class:`Entry` objects in a deterministic order, one per input item, each with
its input position. ``entries(want)`` loads an item's payload (image bytes/path, caption) only
where ``want(pos)`` is true, so DataLoader workers can all walk the cheap listing and each load
only the items it owns. Nothing holds the corpus in memory.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import pyarrow as pa

from .errors import CorpusError
from .images import decode_text, is_image_name

Want = Callable[[int], bool]
BASE_FIELDS = [pa.field("key", pa.string()), pa.field("image_path", pa.string()), pa.field("caption", pa.string())]
IMAGE_COLUMNS = ("image_path", "image", "filepath", "path", "file", "filename", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "txt", "captions")


@dataclass
class Entry:
    """One input item. ``image`` is a filesystem path or raw bytes; None when not loaded."""

    pos: int
    key: str
    image_path: str = ""
    image: Union[str, bytes, None] = None
    caption: Optional[str] = None
    extra: dict = field(default_factory=dict)
    repairs: list = field(default_factory=list)
    error: Optional[tuple] = None  # (stage, reason)


class CorpusReader:
    kind = "abstract"
    extra_schema: pa.Schema = pa.schema([])

    def _entries(self, want: Want) -> Iterator[Entry]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def entries(self, want: Want = lambda pos: True) -> Iterator[Entry]:
        """All entries in order; duplicate keys after the first are marked as errors."""
        seen: set[str] = set()
        for e in self._entries(want):
            if e.key in seen:
                e.error = ("reader", f"duplicate key {e.key!r}")
                e.image = None
            else:
                seen.add(e.key)
            yield e

    @property
    def metadata_schema(self) -> pa.Schema:
        return pa.schema(BASE_FIELDS + list(self.extra_schema))


def _read_caption_file(path: str) -> tuple[Optional[str], list[str]]:
    try:
        with open(path, "rb") as f:
            return decode_text(f.read())
    except FileNotFoundError:
        return None, []


def _json_text(data: Optional[bytes], repairs: list) -> Optional[str]:
    if data is None:
        return None
    try:
        return json.dumps(json.loads(data.decode("utf-8", errors="replace")), ensure_ascii=False, sort_keys=True)
    except ValueError:
        repairs.append("metadata .json is not valid JSON; dropped")
        return None


def _finish(e: Entry, caption: Optional[str]) -> Entry:
    e.caption = caption
    if caption is None and e.error is None:
        e.error = ("caption", "missing or empty caption")
    return e


class FolderReader(CorpusReader):
    """Images anywhere under ``root`` with a same-stem ``.txt`` caption and optional ``.json``."""

    kind = "folder"
    extra_schema = pa.schema([pa.field("json", pa.string())])

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def describe(self) -> dict:
        return {"type": self.kind, "path": self.root}

    def _walk(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if is_image_name(name) and not name.startswith("."):
                    yield os.path.join(dirpath, name)

    def _entries(self, want: Want) -> Iterator[Entry]:
        for pos, path in enumerate(self._walk()):
            rel = os.path.relpath(path, self.root).replace(os.sep, "/")
            e = Entry(pos, os.path.splitext(rel)[0], rel)
            if want(pos):
                stem = os.path.splitext(path)[0]
                e.image = path
                caption, e.repairs = _read_caption_file(stem + ".txt")
                meta = None
                if os.path.isfile(stem + ".json"):
                    with open(stem + ".json", "rb") as f:
                        meta = _json_text(f.read(), e.repairs)
                e.extra = {"json": meta}
                _finish(e, caption)
            yield e

    def check(self) -> None:
        first = next(iter(self._walk()), None)
        if first is None:
            raise CorpusError(f"no images found under {self.root}")
        has_txt = any(n.endswith(".txt") for _, _, fs in os.walk(self.root) for n in fs)
        if not has_txt:
            manifests = sorted(p.name for p in Path(self.root).iterdir() if p.suffix in (".csv", ".parquet", ".tsv"))
            hint = f"; it holds {manifests[0]}: pass that file as the corpus" if manifests else ""
            raise CorpusError(f"no .txt captions under {self.root}{hint}")


class ManifestReader(CorpusReader):
    """A Parquet or CSV table: an image-path column (relative to ``image_root``) and a caption column.

    Other columns are kept as metadata. Consecutive rows naming the same image (e.g. Flickr's five
    captions per photo) become one item: ``caption`` is the first, ``captions`` holds them all.
    """

    kind = "manifest"

    def __init__(self, path: str, image_root: Optional[str] = None, image_column: Optional[str] = None,
                 caption_column: Optional[str] = None, key_column: Optional[str] = None):
        self.path = os.path.abspath(path)
        self.image_root = os.path.abspath(image_root) if image_root else os.path.dirname(self.path)
        schema = self._schema()
        names = schema.names
        self.image_column = self._pick(names, image_column, IMAGE_COLUMNS, "image-path")
        self.caption_column = self._pick(names, caption_column, CAPTION_COLUMNS, "caption")
        self.key_column = key_column if key_column else ("key" if "key" in names else None)
        if self.key_column and self.key_column not in names:
            raise CorpusError(f"{self.path}: no column {self.key_column!r} (columns: {', '.join(names)})")
        used = {self.image_column, self.caption_column, self.key_column}
        reserved = {"key", "image_path", "caption", "captions"}
        self.extra_columns = [n for n in names if n not in used and n not in reserved]
        self.extra_schema = pa.schema([schema.field(n) for n in self.extra_columns]
                                      + [pa.field("captions", pa.list_(pa.string()))])

    def describe(self) -> dict:
        return {"type": self.kind, "path": self.path, "image_root": self.image_root,
                "image_column": self.image_column, "caption_column": self.caption_column,
                "key_column": self.key_column}

    def _is_csv(self) -> bool:
        return self.path.lower().endswith((".csv", ".tsv"))

    def _schema(self) -> pa.Schema:
        if not os.path.isfile(self.path):
            raise CorpusError(f"manifest not found: {self.path}")
        try:
            if self._is_csv():
                import csv

                with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
                    header = next(csv.reader(f, delimiter=self._delimiter()), None)
                if not header:
                    raise CorpusError(f"manifest {self.path} is empty")
                return pa.schema([pa.field(h, pa.string()) for h in header])
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).schema_arrow
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"cannot read manifest {self.path}: {str(e).splitlines()[0][:200]}") from None

    def _delimiter(self) -> str:
        return "\t" if self.path.lower().endswith(".tsv") else ","

    @staticmethod
    def _pick(names: list[str], given: Optional[str], candidates: tuple, what: str) -> str:
        if given:
            if given not in names:
                raise CorpusError(f"no column {given!r} in manifest (columns: {', '.join(names)})")
            return given
        for c in candidates:
            if c in names:
                return c
        raise CorpusError(f"manifest has no {what} column (tried {', '.join(candidates)}; "
                          f"columns: {', '.join(names)}); name it with --{what.split('-')[0]}-column")

    def _batches(self) -> Iterator[pa.RecordBatch]:
        if self._is_csv():
            import pyarrow.csv as pcsv

            schema = self._schema()
            reader = pcsv.open_csv(
                self.path, parse_options=pcsv.ParseOptions(delimiter=self._delimiter(), newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in schema.names}))
            yield from reader
        else:
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(self.path).iter_batches(batch_size=8192)

    def _rows(self) -> Iterator[dict]:
        for batch in self._batches():
            yield from batch.to_pylist()

    def _groups(self) -> Iterator[list[dict]]:
        group: list[dict] = []
        for row in self._rows():
            if group and (self.key_column or row[self.image_column] != group[0][self.image_column]):
                yield group
                group = []
            group.append(row)
        if group:
            yield group

    def _resolve(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.image_root, p)

    def _entries(self, want: Want) -> Iterator[Entry]:
        for pos, rows in enumerate(self._groups()):
            row = rows[0]
            img = row[self.image_column]
            key = str(row[self.key_column]) if self.key_column and row[self.key_column] is not None else (img or f"row-{pos}")
            e = Entry(pos, key, str(img or ""))
            if want(pos):
                captions = [" ".join(str(r[self.caption_column]).split()) for r in rows
                            if r[self.caption_column] is not None and str(r[self.caption_column]).strip()]
                e.extra = {n: row[n] for n in self.extra_columns}
                e.extra["captions"] = captions
                if not img:
                    e.error = ("reader", "empty image path")
                elif "://" in img:
                    e.error = ("reader", "remote image URLs are not supported; download them first (e.g. img2dataset)")
                else:
                    e.image = self._resolve(img)
                _finish(e, captions[0] if captions else None)
            yield e

    def check(self) -> None:
        n_rows, n_found = 0, 0
        for row in self._rows():
            p = row[self.image_column]
            if p and "://" not in p:
                n_rows += 1
                n_found += os.path.exists(self._resolve(p))
            if n_rows >= 20:
                break
        if n_rows == 0:
            raise CorpusError(f"manifest {self.path} has no rows with an image path")
        if n_found == 0:
            raise CorpusError(f"none of the first {n_rows} image paths in {os.path.basename(self.path)} exist "
                              f"under {self.image_root}; pass --image-root")


class WebDatasetReader(CorpusReader):
    """WebDataset ``.tar`` shards: members grouped by key (path up to the first dot of the name)."""

    kind = "webdataset"
    extra_schema = pa.schema([pa.field("json", pa.string())])

    def __init__(self, tars: list[str]):
        self.tars = [os.path.abspath(t) for t in tars]

    def describe(self) -> dict:
        return {"type": self.kind, "path": self.tars[0] if len(self.tars) == 1 else os.path.dirname(self.tars[0]),
                "tars": [os.path.basename(t) for t in self.tars]}

    @staticmethod
    def _split(name: str) -> tuple[str, str]:
        d, base = os.path.split(name)
        stem, _, ext = base.partition(".")
        return (f"{d}/{stem}" if d else stem), ext.lower()

    def _groups(self, tar: str) -> Iterator[tuple[str, dict]]:
        """(key, {ext: TarInfo}) per sample; a broken tar yields ('', {'error': reason}) once."""
        try:
            with tarfile.open(tar, "r:") as tf:
                key, members = None, {}
                for m in tf:
                    if not m.isfile():
                        continue
                    k, ext = self._split(m.name)
                    if k != key and members:
                        yield key, members
                        members = {}
                    key = k
                    members[ext] = m
                    members["__tf__"] = tf
                if members:
                    yield key, members
                if self._garbage_after(tf, tar):  # tarfile stops silently at a truncated header
                    yield "", {"error": f"tar {os.path.basename(tar)} is truncated or corrupt after byte {tf.offset}"}
        except (tarfile.TarError, OSError, EOFError) as e:
            yield "", {"error": f"tar {os.path.basename(tar)} unreadable from here on: {type(e).__name__}: {e}"}

    @staticmethod
    def _garbage_after(tf: tarfile.TarFile, path: str) -> bool:
        """Whether non-zero bytes follow the last member tarfile could parse."""
        with open(path, "rb") as f:
            f.seek(tf.offset)
            while block := f.read(1 << 20):
                if block.strip(b"\0"):
                    return True
        return False

    def _entries(self, want: Want) -> Iterator[Entry]:
        pos = 0
        for tar in self.tars:
            tname = os.path.basename(tar)
            for key, mem in self._groups(tar):
                if "error" in mem:
                    e = Entry(pos, f"{tname}#error", tname, error=("reader", mem["error"]))
                    yield e
                    pos += 1
                    continue
                img_ext = next((x for x in ("jpg", "jpeg", "png", "webp") if x in mem), None)
                e = Entry(pos, key, f"{tname}/{mem[img_ext].name}" if img_ext else f"{tname}/{key}")
                if want(pos):
                    tf = mem["__tf__"]

                    def read(ext: str) -> Optional[bytes]:
                        return tf.extractfile(mem[ext]).read() if ext in mem else None

                    try:
                        if img_ext is None:
                            e.error = ("reader", f"no image member for key {key!r} (have: {', '.join(x for x in mem if x != '__tf__')})")
                        else:
                            e.image = read(img_ext)
                        caption, e.repairs = decode_text(read("txt"))
                        e.extra = {"json": _json_text(read("json"), e.repairs)}
                        _finish(e, caption)
                    except (tarfile.TarError, OSError) as err:
                        e.error = ("reader", f"tar member unreadable: {err}")
                yield e
                pos += 1

    def check(self) -> None:
        if not self.tars:
            raise CorpusError("no .tar shards given")


def open_corpus(path: Union[str, os.PathLike], image_root: Optional[str] = None, image_column: Optional[str] = None,
                caption_column: Optional[str] = None, key_column: Optional[str] = None) -> CorpusReader:
    """Pick the reader for ``path`` (folder, .parquet/.csv/.tsv manifest, .tar or a folder of .tar) and check it."""
    path = str(path)
    if not os.path.exists(path):
        raise CorpusError(f"corpus not found: {path}")
    low = path.lower()
    if os.path.isfile(path):
        if low.endswith((".parquet", ".csv", ".tsv")):
            reader: CorpusReader = ManifestReader(path, image_root, image_column, caption_column, key_column)
        elif low.endswith(".tar"):
            reader = WebDatasetReader([path])
        else:
            raise CorpusError(f"unsupported corpus file {path} (expected a folder, .parquet, .csv, .tsv or .tar)")
    else:
        tars = sorted(str(p) for p in Path(path).iterdir() if p.name.endswith(".tar"))
        has_images = any(is_image_name(p.name) for p in Path(path).iterdir())
        reader = WebDatasetReader(tars) if tars and not has_images else FolderReader(path)
    reader.check()
    return reader
