"""The source image of an indexed row, for serving: only files the index itself points to.

The path comes from the row's ``image_path`` in the index metadata and the corpus recorded in the
manifest, never from the caller. Folder corpora and manifests with an image root only serve files
inside that root (a crafted ``../`` in metadata is refused); WebDataset rows are read from their tar.
"""
from __future__ import annotations

import mimetypes
import os
import tarfile
from pathlib import Path
from typing import Optional


class ItemImageError(LookupError):
    """The row has no servable image (reason in the message)."""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def item_image(corpus: dict, image_path: str, max_bytes: int = 64 << 20) -> tuple[bytes, str]:
    """(bytes, media type) of a row's image, given the manifest's ``corpus`` section."""
    if not image_path:
        raise ItemImageError("this row has no image path")
    kind = corpus.get("type")
    if kind == "webdataset":
        return _from_tar(corpus, image_path, max_bytes)
    root: Optional[Path]
    if kind == "clip-retrieval":  # imported rows: absolute paths as clip-retrieval stored them, or under image_root
        return _imported(corpus, image_path, max_bytes)
    if kind == "folder":
        root = Path(corpus["path"])
    elif kind == "manifest":
        root = Path(corpus["image_root"]) if corpus.get("image_root") else Path(corpus["path"]).parent
    else:
        raise ItemImageError(f"index rows from a {kind!r} source have no image files")
    path = Path(image_path) if os.path.isabs(image_path) and kind == "manifest" else root / image_path
    if not (os.path.isabs(image_path) and kind == "manifest") and not _inside(path, root):
        raise ItemImageError("image path leaves the corpus folder")
    return _read_file(path, max_bytes)


def _read_file(path: Path, max_bytes: int) -> tuple[bytes, str]:
    if not path.is_file():
        raise ItemImageError(f"image file is missing: {path.name}")
    if path.stat().st_size > max_bytes:
        raise ItemImageError("image file is too large to serve")
    return path.read_bytes(), media_type(path.name)


def _imported(corpus: dict, image_path: str, max_bytes: int) -> tuple[bytes, str]:
    root = corpus.get("image_root")
    if os.path.isabs(image_path):
        path = Path(image_path)
    elif root:
        path = Path(root) / image_path
        if not _inside(path, Path(root)):
            raise ItemImageError("image path leaves the image root")
    else:
        raise ItemImageError("relative image path and no --image-root given at import")
    return _read_file(path, max_bytes)


def _from_tar(corpus: dict, image_path: str, max_bytes: int) -> tuple[bytes, str]:
    tname, _, member = image_path.partition("/")
    base = Path(corpus["path"])
    folder = base.parent if base.suffix == ".tar" else base
    if tname not in corpus.get("tars", []) or not member:
        raise ItemImageError("row is not in one of this index's tars")
    try:
        with tarfile.open(folder / tname, "r:") as tf:
            info = tf.getmember(member)
            if not info.isfile() or info.size > max_bytes:
                raise ItemImageError("tar member is not a servable file")
            f = tf.extractfile(info)
            return f.read(), media_type(member)
    except (OSError, KeyError, tarfile.TarError) as e:
        raise ItemImageError(f"cannot read {member} from {tname}: {type(e).__name__}") from None
