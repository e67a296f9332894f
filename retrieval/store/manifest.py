"""``manifest.json``: the single source of truth of an index folder (see DESIGN §2)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..errors import IndexFolderError
from .atomic import write_json

FORMAT = "clip-retrieval-engine"
FORMAT_VERSION = 3  # 2: bias generations, file records; 3: one combined index per modality, vectors stored once
MIN_FORMAT = 3  # older folders: `retrieval migrate` rewrites them (no re-embedding)
MANIFEST = "manifest.json"


def new_manifest(model: dict, corpus: dict, build: dict) -> dict:
    """A first build's manifest; its shards get full-text files over ``build["text_columns"]`` (default:
    the captions) unless ``build["fts"]`` is False."""
    build = {"fts": True, "text_columns": ["caption"], **build}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False, "model": model,
            "corpus": corpus, "build": build, "shards": [], "counts": {}, "stats": {}}


def load_manifest(folder: str | os.PathLike, allow_old: bool = False) -> Optional[dict]:
    """The manifest of ``folder``, or None if there is none; a foreign or corrupt one raises."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IndexFolderError(f"{path} is unreadable: {e}") from None
    if m.get("format") != FORMAT:
        raise IndexFolderError(f"{path} is not a manifest of this engine")
    if m.get("format_version", 0) > FORMAT_VERSION:
        raise IndexFolderError(f"{path} has format version {m['format_version']}; this engine reads <= {FORMAT_VERSION}")
    if m.get("format_version", 0) < MIN_FORMAT and not allow_old:
        raise IndexFolderError(f"{folder} was written by an older version (format {m.get('format_version', 0)}); "
                               f"run `retrieval migrate {folder}` once (rewrites its indexes, no re-embedding)")
    return m


def save_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    write_json(Path(folder) / MANIFEST, manifest)


def require_manifest(folder: str | os.PathLike, allow_old: bool = False) -> dict:
    """The manifest of ``folder``; IndexFolderError when it is not an index folder."""
    m = load_manifest(folder, allow_old)
    if m is None:
        raise IndexFolderError(f"{folder} is not an index folder (no manifest.json)", usage=True)
    return m


def recorded_model(folder: str | os.PathLike, device: str = "auto"):
    """Load the model ``folder``'s manifest records (the one its embeddings were made with)."""
    from ..embed import load_recorded_model

    return load_recorded_model(require_manifest(folder)["model"], device)
