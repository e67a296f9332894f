"""Typed exceptions: each carries one human-readable line."""
from __future__ import annotations


class RetrievalError(Exception):
    """Base class for the engine's user-facing errors (CLI prints the message, exits non-zero)."""


class ModelLoadError(RetrievalError):
    """The requested CLIP model or its weights cannot be had."""


class CorpusError(RetrievalError):
    """The corpus path is missing, empty or not a readable corpus."""


class IndexFolderError(RetrievalError):
    """An index folder is incomplete, inconsistent or belongs to another model/build."""


class ItemError(Exception):
    """One corpus item is unusable; the build logs it and goes on (not user-facing alone)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
