"""Corpus readers (folder of images + captions, Parquet/CSV manifest, WebDataset tars), safe image
decoding, and the source image of an indexed row. Imports nothing else of the engine but errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from ..errors import CorpusError
from .base import BASE_FIELDS, CorpusReader, Entry
from .folder import FolderReader
from .images import DEFAULT_MAX_PIXELS, decode_image, decode_text, is_image_name
from .table import ManifestReader
from .webdataset import WebDatasetReader

__all__ = ["open_corpus", "CorpusReader", "Entry", "FolderReader", "ManifestReader", "WebDatasetReader",
           "BASE_FIELDS", "DEFAULT_MAX_PIXELS", "decode_image", "decode_text", "is_image_name"]


def open_corpus(path: Union[str, os.PathLike], image_root: Optional[str] = None, image_column: Optional[str] = None,
                caption_column: Optional[str] = None, key_column: Optional[str] = None,
                require_captions: bool = False) -> CorpusReader:
    """Pick the reader for ``path`` (folder, .parquet/.csv/.tsv manifest, .tar or a folder of .tar) and check it."""
    path = str(path)
    if not os.path.exists(path):
        raise CorpusError(f"corpus not found: {path}", usage=True)
    low = path.lower()
    if os.path.isfile(path):
        if low.endswith((".parquet", ".csv", ".tsv")):
            reader: CorpusReader = ManifestReader(path, image_root, image_column, caption_column, key_column)
        elif low.endswith(".tar"):
            reader = WebDatasetReader([path])
        else:
            raise CorpusError(f"unsupported corpus file {path} (expected a folder, .parquet, .csv, .tsv or .tar)",
                              usage=True)
    else:
        tars = sorted(str(p) for p in Path(path).iterdir() if p.name.endswith(".tar"))
        has_images = any(is_image_name(p.name) for p in Path(path).iterdir())
        reader = WebDatasetReader(tars) if tars and not has_images else FolderReader(path)
    reader.check(require_captions)
    return reader
