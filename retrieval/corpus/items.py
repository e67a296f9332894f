"""The source image of an indexed row, for serving: only image files under a root.

The rule, for every kind of index: a served file must resolve (symlinks followed) under one of the
index's image roots, and its bytes must decode as an image. The roots are the ones the build
recorded in the manifest (a folder corpus's folder, a manifest's ``--image-root`` or its own
folder, an import's ``--image-root``) and the ones the operator adds at serve time
(``retrieval serve --image-root DIR``). Anything else (``/etc/passwd`` in an imported metadata
file, an absolute path outside the roots, a ``../`` or a symlink leading out, a text file named
``.jpg``) is refused with the reason; WebDataset rows are read from the index's own tars. The path
comes from the row's ``image_path`` in the index metadata, never from the caller.
"""
from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..errors import ItemError
from .base import NotAFile, read_regular_file
from .images import decode_image

log = logging.getLogger(__name__)

MAX_BYTES = 64 << 20


class ItemImageError(LookupError):
    """The row has no servable image: ``status`` 404 (no image there) or 403 (refused), reason in the message."""

    def __init__(self, reason: str, status: int = 404):
        super().__init__(reason)
        self.status = status


def _recorded(corpus: dict) -> list[str]:
    kind = corpus.get("type")
    if kind == "folder":
        return [corpus.get("path")]
    if kind == "manifest":
        return [corpus.get("image_root") or (os.path.dirname(corpus["path"]) if corpus.get("path") else None)]
    if kind == "clip-retrieval":
        return [corpus.get("image_root")]
    return []


def image_roots(corpus: dict, extra: Iterable[str | os.PathLike] = (), resolve: bool = True) -> list[Path]:
    """The folders an index may serve images from: the ones its build recorded, then ``extra``
    (symlinks resolved unless ``resolve`` is False)."""
    out: list[Path] = []
    for r in [*_recorded(corpus), *extra]:
        if r:
            p = Path(os.path.realpath(r) if resolve else os.path.abspath(r))
            if p not in out:
                out.append(p)
    return out


def item_image(corpus: dict, image_path: str, extra_roots: Sequence[str | os.PathLike] = (),
               max_bytes: int = MAX_BYTES) -> tuple[bytes, str]:
    """(bytes, media type) of a row's image, given the manifest's ``corpus`` section and the
    operator's extra roots; ItemImageError when there is none or it may not be served."""
    if not image_path:
        raise ItemImageError("this row has no image path")
    kind = corpus.get("type")
    if kind == "webdataset":
        return _from_tar(corpus, image_path, max_bytes)
    if kind not in ("folder", "manifest", "clip-retrieval"):
        raise ItemImageError(f"index rows from a {kind!r} source have no image files")
    roots = image_roots(corpus, extra_roots)
    if os.path.isabs(image_path):
        path = Path(image_path)
    elif kind == "clip-retrieval" and not corpus.get("image_root"):
        raise ItemImageError("relative image path and no --image-root given at import", 403)
    else:
        path = Path(image_roots(corpus)[0]) / image_path
    real = Path(os.path.realpath(path))
    if not any(real == r or r in real.parents for r in roots):
        raise ItemImageError("image path is outside this index's image roots (serve --image-root DIR "
                             "allows another folder)", 403)
    return image_bytes(_read_file(real, max_bytes), real.name)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:  # non-blocking: a FIFO planted under a root must not hang the request
        return read_regular_file(path, max_bytes)
    except NotAFile as e:
        raise ItemImageError(str(e), 403) from None
    except (FileNotFoundError, NotADirectoryError):
        raise ItemImageError(f"image file is missing: {path.name}") from None
    except OSError as e:
        raise ItemImageError(f"image file is unreadable: {path.name} ({e.strerror or type(e).__name__})") from None


def image_bytes(data: bytes, name: str) -> tuple[bytes, str]:
    """(data, its media type) when ``data`` is an image PIL can identify and parse; else a 403
    ItemImageError. The media type comes from the decoded format, not the file name."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
    except Exception:  # noqa: BLE001 - anything PIL cannot parse is not served
        raise ItemImageError(f"{name} is not an image", 403) from None
    return data, Image.MIME.get(fmt or "", "application/octet-stream")


def outside_roots(corpus: dict, paths, extra_roots: Sequence[str | os.PathLike] = ()) -> int:
    """How many of ``paths`` (a pyarrow string array of ``image_path`` values) point outside the
    index's image roots, judged on the text of the paths (cheap, vectorised; symlinks are checked
    when a file is served)."""
    import pyarrow.compute as pc

    kind = corpus.get("type")
    if kind not in ("folder", "manifest", "clip-retrieval") or len(paths) == 0:
        return 0
    paths = pc.fill_null(paths, "")
    given = pc.not_equal(paths, "")
    absolute = pc.starts_with(paths, "/")
    inside = pc.equal(absolute, False)
    for r in image_roots(corpus, extra_roots) + image_roots(corpus, extra_roots, resolve=False):
        inside = pc.or_(inside, pc.starts_with(paths, str(r).rstrip("/") + "/"))
    escapes = pc.or_(pc.starts_with(paths, "../"), pc.match_substring(paths, "/../"))
    if kind == "clip-retrieval" and not corpus.get("image_root"):
        escapes = pc.or_(escapes, pc.equal(absolute, False))
    bad = pc.and_(given, pc.or_(pc.invert(inside), escapes))
    return int(pc.sum(pc.cast(bad, "int64")).as_py() or 0)


def _from_tar(corpus: dict, image_path: str, max_bytes: int) -> tuple[bytes, str]:
    tname, _, member = image_path.partition("/")
    base = Path(corpus["path"])
    folder = base.parent if base.suffix == ".tar" else base
    if tname not in corpus.get("tars", []) or not member:
        raise ItemImageError("row is not in one of this index's tars", 403)
    try:
        with tarfile.open(folder / tname, "r:") as tf:
            info = tf.getmember(member)
            if not info.isfile() or info.size > max_bytes:
                raise ItemImageError("tar member is not a servable file", 403)
            f = tf.extractfile(info)
            return image_bytes(f.read(), member)
    except (OSError, KeyError, tarfile.TarError) as e:
        raise ItemImageError(f"cannot read {member} from {tname}: {type(e).__name__}") from None


def row_picture(corpus: dict, row: dict, extra_roots: Sequence[str | os.PathLike] = ()):
    """The decoded RGB image of a metadata ``row`` (under the image-root rule), or None, logged with the
    reason, when it has none or it cannot be read."""
    try:
        return decode_image(item_image(corpus, row.get("image_path") or "", extra_roots)[0])[0]
    except (ItemImageError, ItemError) as e:
        log.warning("item %s: its image cannot be read (%s)", row.get("key"), getattr(e, "reason", None) or e)
        return None


def no_image_files(corpus: dict) -> Optional[str]:
    """Why an index built from ``corpus`` (its manifest section) has no image files to read, or None."""
    kind = corpus.get("type")
    if kind in ("folder", "manifest", "webdataset") or (kind == "clip-retrieval" and corpus.get("image_root")):
        return None
    if kind == "embeddings":
        return "it was built from embeddings"
    if kind == "clip-retrieval":
        return "it was imported without --image-root"
    return f"its rows come from a {kind!r} source"
