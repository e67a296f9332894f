"""The reader interface: :class:`Entry` records and the :class:`CorpusReader` base class.

Every reader yields :class:`Entry` objects in a deterministic order, one per input item, each with
its input position. ``entries(want)`` loads an item's payload (image bytes/path, caption) only
where ``want(pos)`` is true, so DataLoader workers can all walk the cheap listing and each load
only the items it owns. Nothing holds the corpus in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

import pyarrow as pa

from .images import decode_text

Want = Callable[[int], bool]
BASE_FIELDS = [pa.field("key", pa.string()), pa.field("image_path", pa.string()), pa.field("caption", pa.string())]
SOURCE_FIELD = pa.field("_source", pa.string())  # each row's source fingerprint (how a rerun sees changes)


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
    source: str = ""  # a cheap fingerprint of the item's files (sizes, mtimes) or row; changes when it does


class CorpusReader:
    kind = "abstract"
    extra_schema: pa.Schema = pa.schema([])

    def _entries(self, want: Want, sources: bool) -> Iterator[Entry]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def entries(self, want: Want = lambda pos: True, sources: bool = False) -> Iterator[Entry]:
        """All entries in order; duplicate keys after the first are marked as errors. Key and position
        are known for every entry; the payload and ``source`` where ``want(pos)`` (``source`` for every
        entry with ``sources=True``: a file stat or a row hash each, no payload read)."""
        seen: set[str] = set()
        for e in self._entries(want, sources):
            if e.key in seen:
                e.error = ("reader", f"duplicate key {e.key!r}")
                e.image = None
            else:
                seen.add(e.key)
            yield e

    @property
    def metadata_schema(self) -> pa.Schema:
        return pa.schema(BASE_FIELDS + list(self.extra_schema) + [SOURCE_FIELD])


MAX_SIDE_FILE = 16 << 20  # a caption or .json larger than this is not a caption


class NotAFile(OSError):
    """A caption or metadata path that exists but is no regular file (a folder, a FIFO, a device)."""


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file: FileNotFoundError when there is none; NotAFile (reason in it) when the
    path is a folder, FIFO, socket or device (opened without blocking, never read) or larger than
    ``max_bytes``. What a request or a corpus names can thus never hang a reader on a FIFO."""
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise NotAFile(f"{name} is a folder, not a file") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotAFile(f"{name} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(f"{name} is not a regular file")
        if st.st_size > max_bytes:
            raise NotAFile(f"{name} is larger than {max_bytes >> 20} MiB")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)
    finally:
        os.close(fd)


def read_side_file(path: str) -> Optional[bytes]:
    """The bytes of a caption/.json file beside an image; None when there is none; NotAFile as
    :func:`read_regular_file`."""
    try:
        return read_regular_file(path, MAX_SIDE_FILE)
    except FileNotFoundError:
        return None


def read_caption_file(path: str) -> tuple[Optional[str], list[str]]:
    """(caption, repairs) of a ``.txt`` caption: None when there is none, or when the path is not a
    readable regular file (the reason goes in the repairs: the item is indexed without it, logged)."""
    try:
        data = read_side_file(path)
    except OSError as e:
        return None, [f"caption skipped: {e.args[0] if isinstance(e, NotAFile) else e.strerror or type(e).__name__}"]
    return decode_text(data)


def json_text(data: Optional[bytes], repairs: list) -> Optional[str]:
    if data is None:
        return None
    try:
        return json.dumps(json.loads(data.decode("utf-8", errors="replace")), ensure_ascii=False, sort_keys=True)
    except ValueError:
        repairs.append("metadata .json is not valid JSON; dropped")
        return None


def finish_entry(e: Entry, caption: Optional[str]) -> Entry:
    """Set the caption (None: the item has none; whether that is allowed is the build's choice)."""
    e.caption = caption
    return e


def fingerprint(*parts) -> str:
    """A short stable hash of the parts (file sizes and mtimes, row values)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def stat_part(path: str) -> tuple:
    """(size, mtime_ns) of a file, or () when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)
