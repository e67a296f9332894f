"""Open an index folder and search it: per-shard faiss search, merged top-k, metadata join.

This is the minimal query path (plain CLIP cosine, CPU faiss); reranking and other backends build
on it. Opening checks that every shard's faiss index, embeddings and metadata have the manifest's
row count, and (given a model) that the model is the one the index was built with.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import IndexFolderError
from .manifest import load_manifest
from .models import ClipModel, describe, same_model

MODALITIES = ("image", "text")


class Index:
    """A built index folder, opened read-only."""

    def __init__(self, folder: str | os.PathLike, clip: Optional[ClipModel] = None, mmap: bool = True):
        import faiss

        self.folder = Path(folder)
        m = load_manifest(self.folder)
        if m is None:
            raise IndexFolderError(f"{self.folder} is not an index folder (no manifest.json)")
        if not m.get("complete"):
            raise IndexFolderError(f"{self.folder} is incomplete; re-run its build to finish it")
        if clip is not None and not same_model(m["model"], clip.identity):
            raise IndexFolderError(f"{self.folder} was built with {describe(m['model'])}; "
                                   f"the query model is {describe(clip.identity)}")
        self.manifest, self.clip = m, clip
        self.shards = [s for s in m["shards"] if s["rows"] > 0]
        flag = faiss.IO_FLAG_MMAP if mmap else 0
        self._faiss = {mod: [] for mod in MODALITIES}
        for s in self.shards:
            self._check_shard(s)
            for mod in MODALITIES:
                idx = faiss.read_index(str(self.folder / s["files"][f"{mod}_index"]), flag)
                if idx.ntotal != s["rows"]:
                    raise IndexFolderError(f"shard {s['id']}: {mod} index holds {idx.ntotal} vectors, manifest says {s['rows']}")
                if s["index"][mod]["params"]:
                    faiss.ParameterSpace().set_index_parameters(idx, s["index"][mod]["params"])
                self._faiss[mod].append(idx)
        self.offsets = np.array([s["offset"] for s in self.shards], dtype=np.int64)
        self._meta: dict[int, object] = {}

    def _check_shard(self, s: dict) -> None:
        import pyarrow.parquet as pq

        for name in ("img_emb", "text_emb", "metadata", "image_index", "text_index"):
            if not (self.folder / s["files"][name]).exists():
                raise IndexFolderError(f"shard {s['id']}: missing {s['files'][name]}")
        for name in ("img_emb", "text_emb"):
            rows = np.load(self.folder / s["files"][name], mmap_mode="r").shape[0]
            if rows != s["rows"]:
                raise IndexFolderError(f"shard {s['id']}: {s['files'][name]} has {rows} rows, manifest says {s['rows']}")
        rows = pq.ParquetFile(self.folder / s["files"]["metadata"]).metadata.num_rows
        if rows != s["rows"]:
            raise IndexFolderError(f"shard {s['id']}: metadata has {rows} rows, manifest says {s['rows']}")

    def __len__(self) -> int:
        return int(sum(s["rows"] for s in self.shards))

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["embed_dim"])

    def search_vectors(self, queries: np.ndarray, k: int = 10, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of L2-normalised ``queries`` [n, d] over all shards of ``modality``."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, index has {self.dim}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        indexes = self._faiss[modality]
        with ThreadPoolExecutor(max_workers=min(len(indexes), os.cpu_count() or 1) or 1) as pool:
            parts = list(pool.map(lambda i: indexes[i].search(q, min(k, indexes[i].ntotal)), range(len(indexes))))
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([np.where(p[1] >= 0, p[1] + off, -1) for p, off in zip(parts, self.offsets)], axis=1)
        kk = min(k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def metadata(self, ids) -> list[dict]:
        """Metadata rows for global ids (reads only the shards those ids live in)."""
        import pyarrow.parquet as pq

        out = []
        for gid in np.asarray(ids, dtype=np.int64).ravel().tolist():
            sh = int(np.searchsorted(self.offsets, gid, side="right") - 1)
            if gid < 0 or sh < 0 or gid >= self.offsets[sh] + self.shards[sh]["rows"]:
                raise IndexError(f"id {gid} is not in this index")
            if sh not in self._meta:
                self._meta[sh] = pq.read_table(self.folder / self.shards[sh]["files"]["metadata"])
            row = self._meta[sh].slice(gid - int(self.offsets[sh]), 1).to_pylist()[0]
            out.append({"id": gid, **row})
        return out

    def search_text(self, texts: list[str], k: int = 10, modality: str = "image") -> list[list[dict]]:
        """Encode ``texts`` with the index's model and return the top-k rows per text."""
        if self.clip is None:
            raise IndexFolderError("this Index was opened without a model; pass clip= to search by text")
        from .embed import Encoder

        scores, ids = self.search_vectors(Encoder(self.clip).texts(list(texts)), k, modality)
        return [[{**row, "score": float(s)} for row, s in zip(self.metadata(i[i >= 0]), sc)]
                for sc, i in zip(scores, ids)]


def open_index(folder: str | os.PathLike, clip: Optional[ClipModel] = None) -> Index:
    """Open ``folder`` for search (model checked against the manifest when given)."""
    return Index(folder, clip)
