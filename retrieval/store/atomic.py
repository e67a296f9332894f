"""Atomic file writes: write to a hidden temp name in the same folder, fsync, then rename.

A write that fails for a reason of the machine's (disk full, quota, read-only file system,
permissions) becomes one :class:`~retrieval.errors.StorageError` line naming the path; the temp
file is removed and the target is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator, Union

from ..errors import StorageError

PathLike = Union[str, os.PathLike]
TMP_MARK = ".tmp-"
_MACHINE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
            errno.EFBIG: "file too large for this file system"}


def storage_error(e: OSError, path: PathLike) -> StorageError:
    """The one-line error for a failed write of ``path``."""
    what = _MACHINE.get(e.errno or 0) or e.strerror or type(e).__name__
    return StorageError(f"cannot write {path}: {what}")


def write_failure(path: PathLike, detail: str) -> StorageError:
    """The one-line error for a write that failed without an errno (faiss says only "write error"):
    the cause is read off the file system (full, or else the library's words)."""
    try:
        st = os.statvfs(Path(path).parent)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return StorageError(f"cannot write {path}: no space left on device")
    except OSError:
        pass
    return StorageError(f"cannot write {path}: {detail}")


def is_machine_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and (e.errno in _MACHINE)


@contextlib.contextmanager
def machine_errors(path: PathLike) -> Iterator[None]:
    """Turn a write failure of the machine's (disk full, quota, read-only, permissions) into one
    StorageError line naming ``path``; other errors pass through."""
    try:
        yield
    except OSError as e:
        if is_machine_error(e):
            raise storage_error(e, path) from None
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        with machine_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield str(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success its files are fsynced and it replaces
    ``path`` (a leftover folder of that name, a killed writer's, is removed first), on error it is removed."""
    import shutil

    path = Path(path)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with machine_errors(path):
            tmp.mkdir(parents=True)
            yield tmp
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def remove_stale_temps(folder: PathLike) -> int:
    """Delete temp files a killed writer left under ``folder``; returns how many."""
    n = 0
    for p in Path(folder).rglob(f".*{TMP_MARK}*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n
