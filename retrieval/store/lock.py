"""One writer at a time per index folder: an exclusive POSIX record lock on ``FOLDER/.lock``.

A record lock (``lockf``), not ``flock``: it belongs to the process, so forked DataLoader workers
do not inherit it, and it is released the moment the writer dies (kill -9 included). Inside one
process the lock is re-entrant and threads take turns (a thread lock per folder), so an operation
may call another that locks the same folder.

Every operation that writes a folder (build, bias, and the living-index operations) holds it; a
second writer fails at once with one line instead of interleaving its files with the first's.
Readers never take it: they follow the manifest, which changes in one atomic write.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

from ..errors import IndexFolderError
from .atomic import storage_error

LOCK = ".lock"
_guard = threading.Lock()
_held: dict[str, list] = {}  # folder -> [thread RLock, depth, fd]


@contextlib.contextmanager
def write_lock(folder: str | os.PathLike) -> Iterator[None]:
    folder = Path(folder)
    if not folder.is_dir():  # builds create their folder first (outfolder.prepare_out); nothing else does
        raise IndexFolderError(f"{folder} {'is not a folder' if folder.exists() else 'does not exist'}", usage=True)
    key = str(folder.resolve())
    with _guard:
        entry = _held.setdefault(key, [threading.RLock(), 0, None])
    rlock = entry[0]
    if not rlock.acquire(timeout=600):
        raise IndexFolderError(f"timed out waiting for another writer of {folder} in this process")
    try:
        if entry[1] == 0:
            entry[2] = _lock_file(folder)
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                os.close(entry[2])  # closing releases the process's record lock
                entry[2] = None
    finally:
        rlock.release()


def _lock_file(folder: Path) -> int:
    import fcntl

    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise storage_error(e, folder / LOCK) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise IndexFolderError(f"another retrieval command is writing {folder}; wait for it to finish") from None
    return fd
