"""The shards of an opened index folder: checked against the manifest, with their faiss indexes and
(memory-mapped) embeddings, and the mapping from global ids to (shard, row).

Opening checks, in O(files): every listed file's size and sampled fingerprint
(``store.integrity.quick_check``), each Parquet file's shard identity, and the row counts of the
npy headers, Parquet footers and faiss indexes. Any file that fails to load is named in the error.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.integrity import quick_check
from ..store.layout import EMB_FILE, INDEX_FILE, MODALITIES
from ..store.files import PARQUET_SHARD_KEY


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn any failure to read ``path`` into one IndexFolderError line naming the file."""
    try:
        yield
    except IndexFolderError:
        raise
    except Exception as e:  # numpy, faiss and pyarrow each raise their own kinds
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        raise IndexFolderError(f"{path} is unreadable ({type(e).__name__}: {msg}); "
                               f"run `retrieval verify` on the index folder") from None


def check_listed_files(folder: Path, manifest: dict) -> None:
    """The cheap check of every file the manifest lists; IndexFolderError naming the first bad one."""
    problems = quick_check(folder, manifest)
    if problems:
        rel, why = problems[0]
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise IndexFolderError(f"{folder / rel}: {why}{more}; run `retrieval verify {folder}`")


def read_flag(key: str, mmap: Optional[bool]) -> int:
    """faiss read flag: memory-map Flat shards; by default read IVF/HNSW shards into RAM, because
    faiss's memory-mapped inverted lists (OnDiskInvertedLists) search 1.5-5x slower."""
    import faiss

    use = (key == "Flat") if mmap is None else mmap
    return faiss.IO_FLAG_MMAP if use else 0


def read_shard_index(path: str | os.PathLike, info: dict, mmap: Optional[bool], params: Optional[str] = None):
    """One shard's faiss index, read with ``info``'s (the manifest's) key and tuned search parameters,
    or ``params`` (e.g. 'nprobe=16') instead for non-Flat shards."""
    import faiss

    with reading(path):
        ix = faiss.read_index(str(path), read_flag(info["key"], mmap))
    use = params if params and info["key"] != "Flat" else info["params"]
    if use:
        try:
            faiss.ParameterSpace().set_index_parameters(ix, use)
        except RuntimeError:
            raise ValueError(f"search parameters {use!r} do not apply to a {info['key']} index") from None
    return ix


class ShardSet:
    """Non-empty shards of ``manifest`` under ``folder``; every file's rows checked on open."""

    def __init__(self, folder: Path, manifest: dict, mmap: Optional[bool] = None, search_params: Optional[str] = None,
                 previous: Optional["ShardSet"] = None):
        """``previous``: the shard set of an older manifest of the same folder; its loaded indexes of
        shards still present are reused (shards are immutable and their ids never reused)."""
        self.folder, self.manifest, self.mmap, self.search_params = Path(folder), manifest, mmap, search_params
        self.shards = [s for s in manifest["shards"] if s["rows"] > 0]
        self.starts = np.array([s["offset"] for s in self.shards], dtype=np.int64)  # global id of each first row
        self.rows = np.array([s["rows"] for s in self.shards], dtype=np.int64)
        self.faiss: dict[str, list] = {mod: [] for mod in MODALITIES}
        check_listed_files(self.folder, manifest)
        old = {} if previous is None else {s["id"]: i for i, s in enumerate(previous.shards)}
        for s in self.shards:
            if s["id"] in old:
                for mod in MODALITIES:
                    self.faiss[mod].append(previous.faiss[mod][old[s["id"]]])
                continue
            self._check_files(s)
            for mod in MODALITIES:
                ix = read_shard_index(self.path(s, INDEX_FILE[mod]), s["index"][mod], mmap, search_params)
                if ix.ntotal != s["rows"]:
                    raise IndexFolderError(f"shard {s['id']}: {mod} index holds {ix.ntotal} vectors, "
                                           f"manifest says {s['rows']}")
                self.faiss[mod].append(ix)
        self._emb: dict[str, list[np.ndarray]] = {}

    def path(self, shard: dict, role: str) -> Path:
        return self.folder / shard["files"][role]

    def _check_files(self, s: dict) -> None:
        import pyarrow.parquet as pq

        for role in ("img_emb", "text_emb", "metadata", "image_index", "text_index"):
            if not self.path(s, role).exists():
                raise IndexFolderError(f"shard {s['id']}: missing {s['files'][role]}")
        for role in ("img_emb", "text_emb"):
            with reading(self.path(s, role)):
                shape = np.load(self.path(s, role), mmap_mode="r").shape
            if shape[0] != s["rows"]:
                raise IndexFolderError(f"shard {s['id']}: {s['files'][role]} has {shape[0]} rows, manifest says {s['rows']}")
            if len(shape) != 2 or shape[1] != self.dim:
                raise IndexFolderError(f"shard {s['id']}: {s['files'][role]} has shape {shape}, the index has dim {self.dim}")
        with reading(self.path(s, "metadata")):
            meta = pq.ParquetFile(self.path(s, "metadata")).metadata
        if meta.num_rows != s["rows"]:
            raise IndexFolderError(f"shard {s['id']}: metadata has {meta.num_rows} rows, manifest says {s['rows']}")
        owner = (meta.metadata or {}).get(PARQUET_SHARD_KEY)
        if owner is not None and json.loads(owner) != [s["id"], s["offset"]]:
            raise IndexFolderError(f"{self.path(s, 'metadata')} holds the rows of shard {json.loads(owner)[0]}, "
                                   f"not shard {s['id']}")

    def __len__(self) -> int:
        return int(self.rows.sum())

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["embed_dim"])

    def embeddings(self, modality: str) -> list[np.ndarray]:
        """Per-shard stored (fp16, memory-mapped) embeddings of ``modality``."""
        if modality not in self._emb:
            out = []
            for s in self.shards:
                with reading(self.path(s, EMB_FILE[modality])):
                    out.append(np.load(self.path(s, EMB_FILE[modality]), mmap_mode="r"))
            self._emb[modality] = out
        return self._emb[modality]

    def locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(shard position, row in shard) of global ``ids`` [n]; IndexError for ids not in the index."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        sh = np.searchsorted(self.starts, flat, side="right") - 1
        bad = (flat < 0) | (sh < 0) | (flat >= (self.starts + self.rows)[np.clip(sh, 0, None)])
        if bad.any():
            raise IndexError(f"id {int(flat[bad][0])} is not in this index")
        return sh, flat - self.starts[sh]

    def gather(self, ids, modality: str) -> np.ndarray:
        """Stored embeddings of global ``ids`` as float32 [..., d] (ids < 0 give zero rows)."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.ravel()
        out = np.zeros((len(flat), self.dim), np.float32)
        valid = flat >= 0
        if valid.any():
            sh, local = self.locate(flat[valid])
            pos = np.flatnonzero(valid)
            embs = self.embeddings(modality)
            for k in np.unique(sh):
                sel = sh == k
                out[pos[sel]] = embs[k][local[sel]]
        return out.reshape(ids.shape + (self.dim,))
