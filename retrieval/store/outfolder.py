"""The output folder of a build: checked before any work, created, and compared with what it holds."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..corpus import CorpusReader
from ..embed import ClipModel, describe, same_model
from ..errors import IndexFolderError, UsageError
from .faiss_index import validate_key
from .manifest import load_manifest

RESUME_KEYS = ("shard_size", "index_key", "memory_budget", "max_pixels", "require_captions", "modalities")
_DEFAULTS = {"require_captions": False, "modalities": ["image", "text"]}  # settings folders written before they existed had


def check_index_key(index_key: Optional[str], dim: int) -> None:
    """A forced ``--index-key`` must be one faiss can build at ``dim``; checked before any embedding."""
    if index_key:
        try:
            validate_key(index_key, dim)
        except ValueError as e:
            raise IndexFolderError(f"--index-key: {e}") from None


def check_out(out: Path) -> None:
    """Whether ``out`` can become an index folder, without creating anything (checked before the
    model is loaded): not a file, and its nearest existing ancestor a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create --out {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create --out {out}: {probe} is not writable")


def prepare_out(out: Path) -> None:
    """Create the output folder, or say in one line why it cannot be one."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or type(e).__name__}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} is not writable")


def committed(manifest: dict) -> str:
    """What a folder holds so far, for messages: shards, rows and bytes."""
    shards = manifest["shards"]
    size = sum(sum(s.get("bytes", {}).values()) for s in shards)
    return f"{len(shards)} shard(s), {sum(s['rows'] for s in shards)} items, {size / 2**20:.1f} MiB"


def check_existing(out: Path, clip: ClipModel, reader: CorpusReader, settings: dict) -> Optional[dict]:
    m = load_manifest(out)
    if m is None:
        return None
    if not same_model(m["model"], clip.identity):
        raise IndexFolderError(f"{out} holds an index of {describe(m['model'])}, not {describe(clip.identity)}; "
                               f"use another --out", usage=True)
    if m["corpus"] != reader.describe():
        raise IndexFolderError(f"{out} was built from another corpus ({m['corpus'].get('path')}); use another --out",
                               usage=True)
    diff = ", ".join(f"{k}={m['build'].get(k, _DEFAULTS.get(k))}" for k in RESUME_KEYS
                     if m["build"].get(k, _DEFAULTS.get(k)) != settings.get(k, _DEFAULTS.get(k)))
    if diff:
        raise IndexFolderError(f"{out} was built with other settings ({diff}); "
                               f"re-run with the same ones or use another --out", usage=True)
    return m
