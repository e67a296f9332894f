"""WebDataset ``.tar`` shards: members grouped by key (path up to the first dot of the name)."""
from __future__ import annotations

import os
import tarfile
from typing import Iterator, Optional

import pyarrow as pa

from ..errors import CorpusError
from .base import CorpusReader, Entry, Want, fingerprint, finish_entry, json_text
from .images import decode_text


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

    def _entries(self, want: Want, sources: bool) -> Iterator[Entry]:
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
                wanted = want(pos)
                if wanted or sources:
                    e.source = fingerprint(tname, sorted((x, m.size, m.mtime, m.offset) for x, m in mem.items()
                                                         if x != "__tf__"))
                if wanted:
                    tf = mem["__tf__"]

                    def read(ext: str) -> Optional[bytes]:
                        return tf.extractfile(mem[ext]).read() if ext in mem else None

                    try:
                        if img_ext is None:
                            e.error = ("reader", f"no image member for key {key!r} (have: {', '.join(x for x in mem if x != '__tf__')})")
                        else:
                            e.image = read(img_ext)
                        caption, e.repairs = decode_text(read("txt"))
                        e.extra = {"json": json_text(read("json"), e.repairs)}
                        finish_entry(e, caption)
                    except (tarfile.TarError, OSError) as err:
                        e.error = ("reader", f"tar member unreadable: {err}")
                yield e
                pos += 1

    def check(self, require_captions: bool = False) -> None:
        if not self.tars:
            raise CorpusError("no .tar shards given")
