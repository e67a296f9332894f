"""One writer at a time per index folder: an exclusive ``flock`` on ``FOLDER/.lock``.

Every operation that writes a folder (build, bias, and the living-index operations) holds it; a
second writer fails at once with one line instead of interleaving its files with the first's.
Readers never take it: they follow the manifest, which changes in one atomic write.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ..errors import IndexFolderError

LOCK = ".lock"


@contextlib.contextmanager
def write_lock(folder: str | os.PathLike) -> Iterator[None]:
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexFolderError(f"another retrieval command is writing {folder}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
