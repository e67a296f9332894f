"""Parquet / CSV / TSV manifests: an image-path column, a caption column, other columns as metadata."""
from __future__ import annotations

import os
from typing import Iterator, Optional

import pyarrow as pa

from ..errors import CorpusError
from .base import CorpusReader, Entry, Want, finish_entry

IMAGE_COLUMNS = ("image_path", "image", "filepath", "path", "file", "filename", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "txt", "captions")


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
                finish_entry(e, captions[0] if captions else None)
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
