"""Image folders: images anywhere under a root, with same-stem ``.txt`` captions and ``.json`` metadata."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import CorpusError
from .base import (CorpusReader, Entry, NotAFile, Want, finish_entry, fingerprint, json_text, read_caption_file,
                   read_side_file, stat_part)
from .images import is_image_name

log = logging.getLogger("retrieval.corpus")


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

    def _entries(self, want: Want, sources: bool) -> Iterator[Entry]:
        for pos, path in enumerate(self._walk()):
            rel = os.path.relpath(path, self.root).replace(os.sep, "/")
            stem = os.path.splitext(path)[0]
            e = Entry(pos, os.path.splitext(rel)[0], rel)
            wanted = want(pos)
            if wanted or sources:
                e.source = fingerprint(stat_part(path), stat_part(stem + ".txt"), stat_part(stem + ".json"))
            if wanted:
                e.image = path
                caption, e.repairs = read_caption_file(stem + ".txt")
                try:
                    meta = json_text(read_side_file(stem + ".json"), e.repairs)
                except OSError as err:
                    meta = None
                    e.repairs.append(f"metadata .json skipped: {err.args[0] if isinstance(err, NotAFile) else err.strerror}")
                e.extra = {"json": meta}
                finish_entry(e, caption)
            yield e

    def check(self, require_captions: bool = False) -> None:
        first = next(iter(self._walk()), None)
        if first is None:
            raise CorpusError(f"no images found under {self.root}")
        has_txt = any(n.endswith(".txt") for _, _, fs in os.walk(self.root) for n in fs)
        if not has_txt:
            manifests = sorted(p.name for p in Path(self.root).iterdir() if p.suffix in (".csv", ".parquet", ".tsv"))
            hint = f"; it holds {manifests[0]}: pass that file as the corpus to use its captions" if manifests else ""
            if require_captions:
                raise CorpusError(f"no .txt captions under {self.root}{hint}")
            log.warning("no .txt captions under %s: indexing the images without captions%s", self.root, hint)
