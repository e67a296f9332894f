"""Each modality's coarse quantizer stored once, not in every shard's index file.

The shards of a modality are copies of the folder's one trained quantizer with their own rows added
(``store.quantizer``), so their coarse centroids are equal bit for bit. A shard's index is written
with an empty coarse quantizer whenever its centroids equal those of the folder's kept trained index
(``manifest["trained"][modality]``), and its manifest entry names that file and its record
(``info["coarse"]``); readers attach the trained file's quantizer on load (``attach``), one object
shared by every shard that a ``CoarseCache`` serves. Files that hold their own quantizer (folders
written before, forced keys retrained per shard, merged indexes) load as they are.

At 1M x 512 in 10 shards (IVF4096 over 528-d combined vectors) each shard file held an 8.7 MB copy of
the centroids, and each loaded shard another in RAM; at 10M in 100 shards with 16,384 lists the copies
alone would be 3.5 GB on disk and in RAM.
"""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from .files import save_faiss

RECORD = ("sha256", "bytes", "sample")


def flat_ivf(index):
    """The IndexIVF inside ``index`` (downcast) when its coarse quantizer is a flat index, else None."""
    import faiss

    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return None
    if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        return None
    return ivf


def centroids(ivf) -> np.ndarray:
    """The coarse centroids [nlist, d] of IVF ``ivf`` (a view of faiss's memory; empty when stripped)."""
    import faiss

    q = faiss.downcast_index(ivf.quantizer)
    if not q.ntotal:
        return np.zeros((0, q.d), np.float32)
    return faiss.rev_swig_ptr(q.get_xb(), q.ntotal * q.d).reshape(q.ntotal, q.d)


def _read_centroids(path: str) -> np.ndarray:
    import faiss

    index = faiss.read_index(path)   # held while its IVF's centroids are copied out
    ivf = flat_ivf(index)
    return np.zeros((0, 0), np.float32) if ivf is None else centroids(ivf).copy()


@lru_cache(maxsize=4)
def _cached_centroids(path: str, sha256: str) -> np.ndarray:
    return _read_centroids(path)


def _trained_centroids(path: str, sha256: Optional[str]) -> np.ndarray:
    """The coarse centroids of a kept trained index file (a copy; cached by path and content)."""
    return _cached_centroids(path, sha256) if sha256 else _read_centroids(path)


def shared_with(folder: Path, manifest: dict, modality: str, index) -> Optional[dict]:
    """The record of the folder's kept trained index of ``modality`` ({"file", "sha256", ...}) when
    ``index``'s coarse centroids equal its bit for bit, else None."""
    entry = (manifest.get("trained") or {}).get(modality)
    ivf = flat_ivf(index)
    if entry is None or ivf is None or ivf.quantizer.ntotal == 0:
        return None
    mine = centroids(ivf)
    theirs = _trained_centroids(str(folder / entry["file"]), entry.get("sha256"))
    if mine.shape != theirs.shape or not np.array_equal(mine.view(np.uint32), theirs.view(np.uint32)):
        return None
    return {"file": entry["file"], **{k: entry[k] for k in RECORD if k in entry}}


def save_index(folder: Path, manifest: dict, modality: str, rel: str, index) -> Optional[dict]:
    """Write a shard's index to ``folder / rel``, without its coarse centroids when they are the kept
    trained index's (``shared_with``); returns the ``info["coarse"]`` record (None: the file holds its
    own). ``index`` is left as it was."""
    import faiss

    coarse = shared_with(folder, manifest, modality, index)
    if coarse is None:
        save_faiss(folder / rel, index)
        return None
    ivf = flat_ivf(index)
    full = ivf.quantizer
    empty = faiss.IndexFlat(ivf.d, ivf.metric_type)
    ivf.quantizer = empty
    try:
        save_faiss(folder / rel, index)
    finally:
        ivf.quantizer = full
    return coarse


def set_coarse(info: dict, coarse: Optional[dict]) -> None:
    """Record (or clear) in a shard's index ``info`` where its coarse centroids are kept."""
    if coarse is None:
        info.pop("coarse", None)
    else:
        info["coarse"] = coarse


class CoarseCache:
    """The kept trained indexes of one folder, read once and lent to every shard index whose file holds
    an empty coarse quantizer (``attach``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._held: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def owner(self, entry: dict):
        """The trained index ``entry`` ({"file", "sha256", ...}) names, read once per file and content
        (it owns the shared quantizer)."""
        import faiss

        key = (entry["file"], entry.get("sha256"))
        with self._lock:
            if key not in self._held:
                path = self.folder / entry["file"]
                if not path.is_file():
                    raise IndexFolderError(f"{path}: the coarse quantizer the shards' indexes share is missing; "
                                           f"run `retrieval verify {self.folder}`")
                self._held[key] = faiss.read_index(str(path))
            return self._held[key]

    def attach(self, index, info: dict, where: str = "index"):
        """``index`` with the shared coarse quantizer ``info["coarse"]`` names in place of its empty
        one (the owner is kept alive by ``index``); ``index`` unchanged when its file holds its own.
        IndexFolderError when the file holds none and the manifest names none, or they disagree."""
        ivf = flat_ivf(index)
        if ivf is None or ivf.quantizer.ntotal:
            return index
        entry = info.get("coarse")
        if entry is None:
            raise IndexFolderError(f"{where}: its file holds no coarse centroids and the manifest names none")
        owner = self.owner(entry)
        shared = flat_ivf(owner)
        if shared is None or shared.nlist != ivf.nlist or shared.d != ivf.d or shared.metric_type != ivf.metric_type:
            raise IndexFolderError(f"{where}: the coarse quantizer in {entry['file']} does not fit its lists")
        # the file's empty quantizer (a few hundred bytes) stays allocated: freeing it through its
        # SWIG proxy corrupted the heap (faiss 1.15), and the index must not free the shared one
        ivf.own_fields = False
        ivf.quantizer = shared.quantizer
        index.referenced_objects = [*getattr(index, "referenced_objects", []), owner]
        return index


def read_index(folder: Path, rel: str, info: dict, flags: int = 0, cache: Optional[CoarseCache] = None):
    """A shard's index file ``rel`` read with ``flags``, its shared coarse quantizer attached
    (``cache``'s, or one read for it alone)."""
    import faiss

    index = faiss.read_index(str(Path(folder) / rel), flags)
    return (cache or CoarseCache(folder)).attach(index, info, str(Path(folder) / rel))
