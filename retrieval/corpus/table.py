"""Parquet / CSV / TSV manifests: an image-path column, a caption column, other columns as metadata."""
from __future__ import annotations

import logging
import os
from typing import Iterator, Optional

import pyarrow as pa

from ..errors import CorpusError
from .base import CorpusReader, Entry, Want, fingerprint, finish_entry, stat_part
from .csvtypes import converter, infer_types

log = logging.getLogger("retrieval.corpus")

IMAGE_COLUMNS = ("image_path", "image", "filepath", "path", "file", "filename", "img")
BAD_ROW = "\0bad-row"  # the key of a row that could not be parsed (never a real column name)
MAX_FIELD = 16 << 20
REMOTE = ("remote image URLs are not downloaded by this engine; download them first, e.g. "
          "`img2dataset --url_list MANIFEST --input_format csv --url_col URL_COLUMN --output_format webdataset "
          "--output_folder tars/`, then build from the tars")
CAPTION_COLUMNS = ("caption", "text", "title", "txt", "captions")


def find_column(names: list[str], wanted: str) -> Optional[str]:
    """The column named ``wanted``: exactly, else the first case-insensitive match."""
    if wanted in names:
        return wanted
    return next((n for n in names if n.lower() == wanted.lower()), None)


def pick_column(names: list[str], given: Optional[str], candidates: tuple, what: str) -> str:
    """The column the user named (``given``), else the first of ``candidates`` present."""
    if given:
        found = find_column(names, given)
        if found is None:
            raise CorpusError(f"no column {given!r} in manifest (columns: {', '.join(names)})", usage=True)
        return found
    for c in candidates:
        found = find_column(names, c)
        if found is not None:
            return found
    raise CorpusError(f"manifest has no {what} column (tried {', '.join(candidates)}; "
                      f"columns: {', '.join(names)}); name it with --{what.split('-')[0]}-column", usage=True)


def csv_rows(path: str, delimiter: str) -> Iterator[dict]:
    """CSV rows as dicts; a row that cannot be parsed yields ``{BAD_ROW: reason}`` instead."""
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD))
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None) or []
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield {BAD_ROW: f"malformed CSV row at line {line}: {e}"}
                continue
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                yield {BAD_ROW: f"malformed CSV row at line {line}: {len(row)} fields, the header has {len(header)}"}
                continue
            yield dict(zip(header, row))


def check_not_urls_only(path: str, names: list[str], image_column: Optional[str]) -> None:
    """CorpusError up front when the manifest's only image column is a URL column."""
    url = next((n for n in names if n.lower() in ("url", "image_url", "img_url")), None)
    if url and not image_column and not any(find_column(names, c) for c in IMAGE_COLUMNS):
        raise CorpusError(f"{os.path.basename(path)} has a {url!r} column but no local image-path column "
                          f"(tried {', '.join(IMAGE_COLUMNS)}): {REMOTE}".replace("URL_COLUMN", url))


class ManifestReader(CorpusReader):
    """A Parquet or CSV table: an image-path column (relative to ``image_root``) and a caption column.

    Other columns are kept as metadata; a CSV's are typed from all their values (``csvtypes``: int,
    float, bool, date, timestamp, else string), Parquet's keep their types. Consecutive rows naming the same image (e.g. Flickr's five
    captions per photo) become one item: ``caption`` is the first, ``captions`` holds them all.
    Column names match case-insensitively. A CSV row that cannot be parsed (wrong number of fields,
    a NUL byte, a field over 16 MiB) becomes one skipped item, logged like a corrupt image.
    """

    kind = "manifest"

    def __init__(self, path: str, image_root: Optional[str] = None, image_column: Optional[str] = None,
                 caption_column: Optional[str] = None, key_column: Optional[str] = None):
        self.path = os.path.abspath(path)
        self.image_root = os.path.abspath(image_root) if image_root else os.path.dirname(self.path)
        schema = self._schema()
        names = schema.names
        check_not_urls_only(self.path, names, image_column)
        self.image_column = pick_column(names, image_column, IMAGE_COLUMNS, "image-path")
        try:
            self.caption_column: Optional[str] = pick_column(names, caption_column, CAPTION_COLUMNS, "caption")
        except CorpusError:
            if caption_column:
                raise
            self.caption_column = None  # photos without captions, like a folder without .txt files
            log.warning("%s has no caption column (tried %s): indexing its images without captions (name one "
                        "with --caption-column)", os.path.basename(self.path), ", ".join(CAPTION_COLUMNS))
        self.key_column = (pick_column(names, key_column, (), "key") if key_column
                           else find_column(names, "key"))
        used = {self.image_column, self.caption_column, self.key_column}
        reserved = {"key", "image_path", "caption", "captions"}
        self.extra_columns = [n for n in names if n not in used and n.lower() not in reserved]
        types = {n: schema.field(n).type for n in self.extra_columns}
        if self._is_csv() and self.extra_columns:  # typed like pyarrow/DuckDB would, from every row
            types = infer_types((r for r in self._rows() if BAD_ROW not in r), self.extra_columns)
        self._convert = {n: converter(t) for n, t in types.items()} if self._is_csv() else None
        self.extra_schema = pa.schema([pa.field(n, types[n]) for n in self.extra_columns]
                                      + [pa.field("captions", pa.list_(pa.string()))])

    def describe(self) -> dict:
        return {"type": self.kind, "path": self.path, "image_root": self.image_root,
                "image_column": self.image_column, "caption_column": self.caption_column,
                "key_column": self.key_column}

    def _is_csv(self) -> bool:
        return self.path.lower().endswith((".csv", ".tsv"))

    def _schema(self) -> pa.Schema:
        if not os.path.isfile(self.path):
            raise CorpusError(f"manifest not found: {self.path}", usage=True)
        try:
            if self._is_csv():
                import csv

                with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as f:
                    header = next(csv.reader(f, delimiter=self._delimiter()), None)
                if not header:
                    raise CorpusError(f"manifest {self.path} is empty")
                dups = sorted({h for h in header if header.count(h) > 1})
                if dups:
                    raise CorpusError(f"manifest {self.path} names column(s) {', '.join(map(repr, dups))} twice")
                return pa.schema([pa.field(h, pa.string()) for h in header])
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).schema_arrow
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"cannot read manifest {self.path}: {str(e).splitlines()[0][:200]}") from None

    def _delimiter(self) -> str:
        return "\t" if self.path.lower().endswith(".tsv") else ","

    def _rows(self) -> Iterator[dict]:
        if self._is_csv():
            yield from csv_rows(self.path, self._delimiter())
            return
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=8192):
            yield from batch.to_pylist()

    def _groups(self) -> Iterator[list[dict]]:
        group: list[dict] = []
        for row in self._rows():
            if BAD_ROW in row:
                if group:
                    yield group
                    group = []
                yield [row]
                continue
            if group and (self.key_column or row[self.image_column] != group[0][self.image_column]):
                yield group
                group = []
            group.append(row)
        if group:
            yield group

    def _resolve(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.image_root, p)

    def _entries(self, want: Want, sources: bool) -> Iterator[Entry]:
        for pos, rows in enumerate(self._groups()):
            row = rows[0]
            if BAD_ROW in row:
                yield Entry(pos, f"row-{pos}", "", error=("reader", row[BAD_ROW]))
                continue
            img = row[self.image_column]
            key = str(row[self.key_column]) if self.key_column and row[self.key_column] is not None else (img or f"row-{pos}")
            e = Entry(pos, key, str(img or ""))
            wanted = want(pos)
            if wanted or sources:
                local = self._resolve(img) if img and "://" not in img else ""
                e.source = fingerprint([sorted(map(str, r.items())) for r in rows], stat_part(local) if local else ())
            if wanted:
                col = self.caption_column
                captions = [] if col is None else [" ".join(str(r[col]).split()) for r in rows
                                                   if r[col] is not None and str(r[col]).strip()]
                e.extra = ({n: row[n] for n in self.extra_columns} if self._convert is None
                           else {n: self._convert[n](row[n]) for n in self.extra_columns})
                e.extra["captions"] = captions
                if not img:
                    e.error = ("reader", "empty image path")
                elif "://" in img:
                    e.error = ("reader", REMOTE)
                else:
                    e.image = self._resolve(img)
                finish_entry(e, captions[0] if captions else None)
            yield e

    def check(self, require_captions: bool = False) -> None:
        n_rows, n_found, n_urls = 0, 0, 0
        for row in self._rows():
            p = None if BAD_ROW in row else row[self.image_column]
            if p and "://" in p:
                n_urls += 1
            elif p:
                n_rows += 1
                n_found += os.path.exists(self._resolve(p))
            if n_rows >= 20:
                break
        if n_rows == 0 and n_urls:
            raise CorpusError(f"the image column {self.image_column!r} of {os.path.basename(self.path)} holds remote "
                              f"URLs ({n_urls} rows, none a local path): {REMOTE}")
        if n_rows == 0:
            raise CorpusError(f"manifest {self.path} has no rows with an image path")
        if n_found == 0:
            raise CorpusError(f"none of the first {n_rows} image paths in {os.path.basename(self.path)} exist "
                              f"under {self.image_root}; pass --image-root", usage=True)
