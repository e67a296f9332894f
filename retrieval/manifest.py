"""``manifest.json``: the single source of truth of an index folder (see DESIGN §2)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .atomic import write_json
from .errors import IndexFolderError

FORMAT = "clip-retrieval-engine"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def shard_name(k: int) -> str:
    """Zero-padded shard number, so that lexical order is shard order (clip-retrieval style)."""
    return f"{k:04d}"


def shard_files(k: int) -> dict[str, str]:
    s = shard_name(k)
    return {
        "img_emb": f"img_emb/img_emb_{s}.npy",
        "text_emb": f"text_emb/text_emb_{s}.npy",
        "metadata": f"metadata/metadata_{s}.parquet",
        "image_index": f"faiss/image_{s}.index",
        "text_index": f"faiss/text_{s}.index",
    }


def new_manifest(model: dict, corpus: dict, build: dict) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False, "model": model,
            "corpus": corpus, "build": build, "shards": [], "counts": {}, "stats": {}}


def load_manifest(folder: str | os.PathLike) -> Optional[dict]:
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
    return m


def save_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    write_json(Path(folder) / MANIFEST, manifest)
