"""Typed exceptions: each carries one human-readable line and the CLI exit code it maps to.

Exit codes (the CLI's contract): 2 for usage errors (the command line is wrong: an option value, a
path that does not exist or is not the right kind of thing, an unknown model), 1 for data errors
(the files named are unusable: a corrupt or misaligned index, a corpus with nothing usable, a full
disk). ``usage=`` overrides a class's default for one error.
"""
from __future__ import annotations

from typing import Optional

USAGE, DATA = 2, 1


class RetrievalError(Exception):
    """Base class for the engine's user-facing errors (the CLI prints the message and exits)."""

    exit_code = DATA

    def __init__(self, message: str = "", *, usage: Optional[bool] = None):
        super().__init__(message)
        if usage is not None:
            self.exit_code = USAGE if usage else DATA


class UsageError(RetrievalError):
    """The request itself is wrong (a bad argument, a path of the wrong kind)."""

    exit_code = USAGE


class ModelLoadError(RetrievalError):
    """The requested CLIP model or its weights cannot be had."""

    exit_code = USAGE


class CorpusError(RetrievalError):
    """The corpus path is missing, empty or not a readable corpus."""


class IndexFolderError(RetrievalError):
    """An index folder is incomplete, inconsistent, corrupt or belongs to another model/build."""


class StorageError(RetrievalError):
    """Writing failed for a reason of the machine's (disk full, quota, read-only, permissions)."""


class ItemError(Exception):
    """One corpus item is unusable; the build logs it and goes on (not user-facing alone)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
