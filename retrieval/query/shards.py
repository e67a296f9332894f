"""The shards of an opened index folder: checked against the manifest on open, loaded lazily.

Opening reads the manifest and checks, in O(files) and without loading any index: every listed
file's size and sampled fingerprint (``store.integrity.quick_check``), each Parquet footer's row
count and shard identity, each npy header and each faiss header (16 bytes: its row count). A
modality's indexes are read on first use, memory-mapped in faiss's in-memory layout
(``IO_FLAG_MMAP_IFC``): the page cache holds the lists, not the process, and nothing is read for a
modality never searched. ``mmap=False`` reads them into RAM instead. Any file that fails to load is
named in the error.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.alignment import UNREADABLE, shard_problems
from ..store.coarse import CoarseCache
from ..store.layout import INDEX_FILE
from ..store.integrity import quick_check
from ..store.keys import compressed
from ..store.vectors import ShardVectors
from .coarse import CoarseGroup, quantizer_groups
from .flat_group import FlatGroup, small_flat
from .merged import Merged, open_merged
from .reading import reading


def check_listed_files(folder: Path, manifest: dict) -> None:
    """The cheap check of every file the manifest lists; IndexFolderError naming the first bad one."""
    problems = quick_check(folder, manifest)
    if problems:
        rel, why = problems[0]
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise IndexFolderError(f"{folder / rel}: {why}{more}; run `retrieval verify {folder}`")


def read_shard_index(path: str | os.PathLike, info: dict, mmap: Optional[bool], params: Optional[str],
                     coarse: CoarseCache):
    """One shard's faiss index (memory-mapped in the in-memory layout unless ``mmap`` is False), with
    ``info``'s (the manifest's) tuned search parameters, or ``params`` (e.g. 'nprobe=16') instead, and
    the coarse quantizer its shards share attached (``store.coarse``: ``coarse`` lends it)."""
    import faiss

    path = Path(path)
    with reading(path):
        ix = faiss.read_index(str(path), 0 if mmap is False else faiss.IO_FLAG_MMAP_IFC)
    ix = coarse.attach(ix, info, str(path))
    use = params if params else info["params"]
    if use:
        try:
            faiss.ParameterSpace().set_index_parameters(ix, use)
        except RuntimeError:
            raise ValueError(f"search parameters {use!r} do not apply to a {info['key']} index") from None
    return ix


def check_shard_files(folder: Path, s: dict, dim: int) -> None:
    """Shard ``s``'s files against the manifest (``store.alignment.shard_problems``); one-line error."""
    problems = shard_problems(folder, s, dim, keys=False)
    if problems:
        rel, why = problems[0]
        if why.startswith(UNREADABLE):
            raise IndexFolderError(f"{folder / rel} {why}; run `retrieval verify` on the index folder")
        raise IndexFolderError(f"{folder / rel}: {why}")


def check_params(shards: list[dict], params: Optional[str]) -> None:
    """ValueError when ``params`` (e.g. 'nprobe=16') do not apply to some shard's index key (checked
    on an empty index of that key: nothing is loaded)."""
    import faiss

    if not params:
        return
    seen = set()
    for s in shards:
        for info in s["index"].values():
            if info["key"] == "Flat" or (info["key"], info["dim"]) in seen:
                continue
            seen.add((info["key"], info["dim"]))
            try:
                faiss.ParameterSpace().set_index_parameters(
                    faiss.index_factory(info["dim"], info["key"], faiss.METRIC_INNER_PRODUCT), params)
            except RuntimeError:
                raise ValueError(f"search parameters {params!r} do not apply to a {info['key']} index") from None


class ShardSet:
    """Non-empty shards of ``manifest`` under ``folder``: checked on open, indexes loaded on first use."""

    def __init__(self, folder: Path, manifest: dict, mmap: Optional[bool] = None, search_params: Optional[str] = None,
                 previous: Optional["ShardSet"] = None):
        """``previous``: the shard set of an older manifest of the same folder; its loaded indexes of
        shards still present are reused (shards are immutable and their ids never reused)."""
        self.folder, self.manifest, self.mmap, self.search_params = Path(folder), manifest, mmap, search_params
        self.shards = [s for s in manifest["shards"] if s["rows"] > 0]
        self.starts = np.array([s["offset"] for s in self.shards], dtype=np.int64)  # global id of each first row
        self.rows = np.array([s["rows"] for s in self.shards], dtype=np.int64)
        check_listed_files(self.folder, manifest)
        check_params(self.shards, search_params)
        self._lock = threading.Lock()
        self._indexes: dict[tuple, object] = {}
        self._merged: dict[str, Optional[Merged]] = {}
        self._groups: dict[str, list[CoarseGroup]] = {}
        self._flat: dict[str, Optional[FlatGroup]] = {}
        self._vectors: dict[tuple, ShardVectors] = {}
        self._compressed: dict[str, bool] = {}
        # the trained indexes lent to the shards, by file and content: a previous set's stay valid
        self._coarse = previous._coarse if previous is not None and previous.folder == self.folder else CoarseCache(folder)
        old = {} if previous is None else {s["id"]: previous for s in previous.shards}
        for s in self.shards:
            if s["id"] in old:
                continue  # checked when that snapshot opened
            check_shard_files(self.folder, s, self.dim)
        if previous is not None:  # loaded indexes of shards still present
            self._indexes.update({k: v for k, v in previous._indexes.items() if k[1] in old})

    def path(self, shard: dict, role: str) -> Path:
        return self.folder / shard["files"][role]

    def __len__(self) -> int:
        return int(self.rows.sum())

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["embed_dim"])

    def has_index(self, i: int, modality: str) -> bool:
        return INDEX_FILE[modality] in self.shards[i]["files"]

    def compressed(self, modality: str) -> bool:
        """Whether some shard's ``modality`` index holds lossy codes (its results are re-scored
        exactly from the fp16 vectors it keeps: ``query.rescore``)."""
        if modality not in self._compressed:
            self._compressed[modality] = any(compressed(s["index"][modality]["key"]) for i, s in enumerate(self.shards)
                                             if modality in s["index"] and self.has_index(i, modality))
        return self._compressed[modality]

    def index(self, i: int, modality: str):
        """Shard ``i``'s faiss index of ``modality`` (loaded on first use), or None (a Flat shard)."""
        s = self.shards[i]
        if not self.has_index(i, modality):
            return None
        key = (modality, s["id"])
        with self._lock:
            if key not in self._indexes:
                ix = read_shard_index(self.path(s, INDEX_FILE[modality]), s["index"][modality], self.mmap,
                                      self.search_params, self._coarse)
                if ix.ntotal != s["rows"]:
                    raise IndexFolderError(f"shard {s['id']}: {modality} index holds {ix.ntotal} vectors, "
                                           f"manifest says {s['rows']}")
                self._indexes[key] = ix
            return self._indexes[key]

    def merged(self, modality: str) -> Optional[Merged]:
        """The merged on-disk index over some of these shards (``ops.merge``), or None (none, or
        stale: a covered shard changed since, or is not in this set)."""
        with self._lock:
            if modality not in self._merged:
                self._merged[modality] = open_merged(self, modality)
            return self._merged[modality]

    def coarse_groups(self, modality: str) -> list[CoarseGroup]:
        """Shard positions whose ``modality`` indexes share one coarse quantizer (``query.coarse``), but
        for those a current merged index answers for (never loaded for it); loads the indexes on first use."""
        if modality not in self._groups:
            merged = self.merged(modality)
            covered = set() if merged is None else set(merged.positions.tolist())
            found = quantizer_groups([self.index(i, modality) if modality in s["index"] and i not in covered else None
                                      for i, s in enumerate(self.shards)], self.starts)
            with self._lock:
                self._groups[modality] = found
        return self._groups[modality]

    def flat_group(self, modality: str) -> Optional[FlatGroup]:
        """The small Flat shards of ``modality`` as one in-memory float32 matrix (``query.flat_group``),
        or None when there are none; read on first use."""
        if modality not in self._flat:
            pos = small_flat(self.rows.tolist(), [modality in s["index"] and not self.has_index(i, modality)
                                                  for i, s in enumerate(self.shards)])
            group = FlatGroup(pos, [self.vectors(i, modality).all() for i in pos], self.starts[pos]) if pos else None
            with self._lock:
                self._flat[modality] = group
        return self._flat[modality]

    def vectors(self, i: int, modality: str) -> ShardVectors:
        """Shard ``i``'s stored vectors of ``modality`` (from its npy or its index codes)."""
        s = self.shards[i]
        key = (modality, s["id"])
        if key not in self._vectors:
            self._vectors[key] = ShardVectors(self.folder, s, modality, lambda: self.index(i, modality))
        return self._vectors[key]

    def embeddings(self, modality: str) -> list[np.ndarray]:
        """Per-shard stored embeddings of ``modality`` (fp16 [rows, d]; zeros where a shard has none)."""
        return [self.vectors(i, modality).all() if modality in s["index"] else np.zeros((s["rows"], self.dim), np.float16)
                for i, s in enumerate(self.shards)]

    def contains(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(whether each of global ``ids`` [n] is a row of these shards, its shard position: valid
        where it is)."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        sh = np.searchsorted(self.starts, flat, side="right") - 1
        if not len(self.starts):
            return np.zeros(len(flat), bool), sh
        ok = (flat >= 0) & (sh >= 0) & (flat < (self.starts + self.rows)[np.clip(sh, 0, None)])
        return ok, sh

    def locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(shard position, row in shard) of global ``ids`` [n]; IndexError for ids not in the index."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        ok, sh = self.contains(flat)
        if not ok.all():
            raise IndexError(f"id {int(flat[~ok][0])} is not in this index")
        return sh, flat - self.starts[sh]

    def gather(self, ids, modality: str) -> np.ndarray:
        """Stored embeddings of global ``ids`` as float32 [..., d] (ids < 0, and shards without the
        modality, give zero rows); only the rows asked for are read or decoded."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.ravel()
        out = np.zeros((len(flat), self.dim), np.float32)
        valid = flat >= 0
        if valid.any():
            sh, local = self.locate(flat[valid])
            pos = np.flatnonzero(valid)
            for k in np.unique(sh):
                sel = sh == k
                if modality in self.shards[k]["index"]:
                    out[pos[sel]] = self.vectors(int(k), modality).rows(local[sel])
        return out.reshape(ids.shape + (self.dim,))
