"""Open an index folder and search it: per-shard faiss search, merged top-k, metadata join.

This is the minimal query path (plain CLIP cosine, CPU faiss); reranking and other backends build
on it. Opening checks that every shard's faiss index, embeddings and metadata have the manifest's
row count, and (given a model) that the model is the one the index was built with.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import IndexFolderError
from .manifest import load_manifest
from .models import ClipModel, describe, same_model

MODALITIES = ("image", "text")
AUGMENTED_CACHE = 4  # augmented index sets kept (one per modality x method; any α)
META_CACHE = 256  # Parquet row groups kept in memory (4096 rows each for indexes built by this version)
log = logging.getLogger(__name__)


def _read_flag(key: str, mmap: Optional[bool]) -> int:
    """faiss read flag: memory-map Flat shards; by default read IVF/HNSW shards into RAM, because
    faiss's memory-mapped inverted lists (OnDiskInvertedLists) search 1.5-5x slower."""
    import faiss

    use = (key == "Flat") if mmap is None else mmap
    return faiss.IO_FLAG_MMAP if use else 0


class Index:
    """A built index folder, opened read-only (``mmap``: None = Flat shards only, True/False = all)."""

    def __init__(self, folder: str | os.PathLike, clip: Optional[ClipModel] = None, mmap: Optional[bool] = None,
                 backend: str = "auto"):
        import faiss

        from .backends import pick_backend

        self.folder = Path(folder)
        m = load_manifest(self.folder)
        if m is None:
            raise IndexFolderError(f"{self.folder} is not an index folder (no manifest.json)")
        if not m.get("complete"):
            raise IndexFolderError(f"{self.folder} is incomplete; re-run its build to finish it")
        if clip is not None and not same_model(m["model"], clip.identity):
            raise IndexFolderError(f"{self.folder} was built with {describe(m['model'])}; "
                                   f"the query model is {describe(clip.identity)}")
        self.manifest, self.clip, self._mmap = m, clip, mmap
        self.shards = [s for s in m["shards"] if s["rows"] > 0]
        self._faiss = {mod: [] for mod in MODALITIES}
        for s in self.shards:
            self._check_shard(s)
            for mod in MODALITIES:
                idx = faiss.read_index(str(self.folder / s["files"][f"{mod}_index"]), _read_flag(s["index"][mod]["key"], mmap))
                if idx.ntotal != s["rows"]:
                    raise IndexFolderError(f"shard {s['id']}: {mod} index holds {idx.ntotal} vectors, manifest says {s['rows']}")
                if s["index"][mod]["params"]:
                    faiss.ParameterSpace().set_index_parameters(idx, s["index"][mod]["params"])
                self._faiss[mod].append(idx)
        self.offsets = np.array([s["offset"] for s in self.shards], dtype=np.int64)
        self._meta: dict[int, tuple] = {}
        self._groups: OrderedDict = OrderedDict()
        self._meta_lock = threading.Lock()
        self._emb_cache: dict[str, list] = {}
        self._backends: dict[str, object] = {}
        self._augmented: dict[tuple, list] = {}
        self.backend_name = pick_backend(backend)
        self._bias_cache: dict[tuple, list] = {}

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

    def backend(self, modality: str):
        """The search backend of ``modality`` (built on first use)."""
        if modality not in self._backends:
            from .backends import FaissBackend, TorchBackend

            if self.backend_name == "torch":
                self._backends[modality] = TorchBackend(self._emb(modality))
            else:
                self._backends[modality] = FaissBackend(self._faiss[modality], self.offsets,
                                                        gpu=self.backend_name == "faiss-gpu")
        return self._backends[modality]

    def search_vectors(self, queries: np.ndarray, k: int = 10, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of L2-normalised ``queries`` [n, d] over all shards of ``modality``."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, index has {self.dim}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        return self.backend(modality).search(q, k)

    def metadata(self, ids) -> list[dict]:
        """Metadata rows for global ids, in order. Reads only the Parquet row groups holding them
        (cached, at most ``META_CACHE`` groups), never whole shards."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        sh = np.searchsorted(self.offsets, flat, side="right") - 1
        ends = self.offsets + np.array([s["rows"] for s in self.shards], dtype=np.int64)
        bad = (flat < 0) | (sh < 0) | (flat >= ends[np.clip(sh, 0, None)])
        if bad.any():
            raise IndexError(f"id {int(flat[bad][0])} is not in this index")
        out: list = [None] * len(flat)
        local = flat - self.offsets[sh]
        for k in np.unique(sh):
            starts = self._row_group_starts(int(k))
            sel = np.flatnonzero(sh == k)
            groups = np.searchsorted(starts, local[sel], side="right") - 1
            for g in np.unique(groups):
                pos = sel[groups == g]
                table = self._row_group(int(k), int(g))
                for p, row in zip(pos, table.take(local[pos] - starts[g]).to_pylist()):
                    out[p] = {"id": int(flat[p]), **row}
        return out

    def _row_group_starts(self, shard: int) -> np.ndarray:
        import pyarrow.parquet as pq

        with self._meta_lock:
            if shard in self._meta:
                return self._meta[shard][1]
            pf = pq.ParquetFile(self.folder / self.shards[shard]["files"]["metadata"])
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
            self._meta[shard] = (pf, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
        return self._meta[shard][1]

    def _row_group(self, shard: int, group: int):
        key = (shard, group)
        with self._meta_lock:  # the cache and pyarrow's ParquetFile are shared across threads
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key]
            while len(self._groups) >= META_CACHE:
                self._groups.popitem(last=False)
            self._groups[key] = self._meta[shard][0].read_row_group(group)
            return self._groups[key]

    # ---- embeddings and biases -------------------------------------------------------------
    def _emb(self, modality: str) -> list[np.ndarray]:
        key = "img_emb" if modality == "image" else "text_emb"
        if modality not in self._emb_cache:
            self._emb_cache[modality] = [np.load(self.folder / s["files"][key], mmap_mode="r") for s in self.shards]
        return self._emb_cache[modality]

    def embeddings(self, ids, modality: str = "image") -> np.ndarray:
        """Stored (fp16) embeddings of global ``ids`` as float32 [..., d]."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.ravel()
        sh = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.zeros((len(flat), self.dim), np.float32)
        embs = self._emb(modality)
        for k in np.unique(sh[flat >= 0]):
            sel = (sh == k) & (flat >= 0)
            out[sel] = embs[k][flat[sel] - self.offsets[k]]
        return out.reshape(ids.shape + (self.dim,))

    def _bias(self, method: str, modality: str) -> list[np.ndarray]:
        from .bias import load_bias

        key = (method, modality)
        if key not in self._bias_cache:
            self._bias_cache[key] = load_bias(self.folder, self.manifest, method, modality)
        return self._bias_cache[key]

    def _gather_bias(self, method: str, modality: str, ids: np.ndarray) -> np.ndarray:
        """Stored per-item scalars for global ``ids`` (any shape)."""
        key = (method, modality, "all")
        if key not in self._bias_cache:
            self._bias_cache[key] = np.concatenate(self._bias(method, modality)).astype(np.float32)
        return self._bias_cache[key][ids]

    # ---- search ----------------------------------------------------------------------------
    def _offset_search(self, q: np.ndarray, k: int, modality: str, method: str, alpha: float):
        """Exact top-k of s(q, j) - scale * c_j (scale 1 for BSAP, α for NNN) over the whole corpus."""
        from .backends import merge_topk, search_shards
        from .rerank import offset_search

        scale = 1.0 if method == "bsap" else float(alpha)
        offsets = self._bias(method, modality)
        if self.backend_name == "torch":
            return self.backend(modality).search(q, k, scale * np.concatenate(offsets))
        aug = self._augmented_indexes(modality, method, offsets)
        if aug is None:  # non-Flat shards without stored augmented indexes: exact numpy scan (slow)
            parts = [offset_search(q, emb, scale * off, k) for emb, off in zip(self._emb(modality), offsets)]
            return merge_topk(parts, self.offsets, k)
        from .augmented import augment_query

        s, ids = search_shards(aug, augment_query(q, scale, aug[0].d), k, self.offsets)
        return s - np.float32(scale * self._shift(method, modality)), ids

    def _shift(self, method: str, modality: str) -> float:
        """The constant subtracted from the stored offsets in the augmented indexes (0 for older folders)."""
        return float(self.manifest["bias"].get("shift", {}).get(method, {}).get(modality, 0.0))

    def _augmented_indexes(self, modality: str, method: str, offsets: list[np.ndarray]) -> Optional[list]:
        """Per-shard bias-augmented indexes (stored ones for non-Flat shards, in-memory Flat ones)."""
        import faiss

        from .augmented import build_augmented
        from .bias import augmented_path

        key = (modality, method)
        if key in self._augmented:
            return self._augmented[key]
        while len(self._augmented) >= AUGMENTED_CACHE:  # bounded: Flat copies hold N x (d+1) floats
            self._augmented.pop(next(iter(self._augmented)))
        missing = [s["id"] for s in self.shards if s["index"][modality]["key"] != "Flat"
                   and not augmented_path(self.folder, method, modality, s["id"]).exists()]
        if missing:  # remembered, so the warning and this check happen once per method and modality
            log.warning("%s: no augmented index for shard(s) %s (re-run `retrieval bias`); "
                        "exact %s search falls back to a numpy scan", self.folder, missing, method)
            self._augmented[key] = None
            return None
        shift = self._shift(method, modality)
        out = []
        for s, emb, off, plain in zip(self.shards, self._emb(modality), offsets, self._faiss[modality]):
            info = s["index"][modality]
            if info["key"] == "Flat":
                out.append(build_augmented(plain, "Flat", emb, off, shift))
                continue
            path = augmented_path(self.folder, method, modality, s["id"])
            ix = faiss.read_index(str(path), _read_flag(info["key"], self._mmap))
            if ix.ntotal != s["rows"]:
                raise IndexFolderError(f"{path} holds {ix.ntotal} vectors, shard has {s['rows']}")
            if info["params"]:
                faiss.ParameterSpace().set_index_parameters(ix, info["params"])
            out.append(ix)
        self._augmented[key] = out
        return out

    def search(self, queries: np.ndarray, k: int = 10, target: str = "image", rerank: str = "clip",
               candidates: Optional[int] = None, tau: Optional[float] = None, lam: float = 0.5,
               alpha: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of query embeddings among ``target`` items.

        ``rerank``: 'clip' (cosine), 'bsap' (balanced score b_j), 'hybrid' (BSAP-H), 'nnn'
        (s - α bias). BSAP and NNN search the whole corpus exactly with the stored ``bias/`` offsets;
        with ``candidates=N`` any method reranks CLIP's top N instead (hybrid always does: default
        N = max(k, 1000)).
        """
        from .rerank import METHODS, bsap_from_offsets, hybrid_from_parts, top_k

        if rerank not in METHODS:
            raise ValueError(f"unknown rerank method {rerank!r}; choose one of {', '.join(METHODS)}")
        if candidates is not None and candidates <= 0:
            raise ValueError(f"candidates must be positive, got {candidates}")
        tau = float(tau if tau is not None else self.manifest.get("bias", {}).get("tau", self.manifest["model"]["logit_scale"]))
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if rerank == "clip" and candidates is None:
            return self.search_vectors(q, k, target)
        if rerank == "hybrid" and candidates is None:
            candidates = max(k, 1000)
        if candidates is None:  # exact whole-corpus search with per-item offsets
            s, ids = self._offset_search(q, k, target, rerank, alpha)
            return (bsap_from_offsets(s, 0.0, tau) if rerank == "bsap" else s), ids
        # candidates mode: the search already gave s(q, j); each method needs only a stored scalar per item
        s, cand = self.search_vectors(q, max(candidates, k), target)
        if (cand < 0).any():  # fewer results than asked (approximate indexes): keep the valid ones
            n_valid = int((cand >= 0).sum(1).min())
            s, cand = s[:, :n_valid], cand[:, :n_valid]
        if rerank == "clip":
            scores = s
        elif rerank == "nnn":
            scores = s - alpha * self._gather_bias("nnn", target, cand)
        else:
            scores = bsap_from_offsets(s, self._gather_bias("bsap", target, cand), tau)
            if rerank == "hybrid":
                scores = hybrid_from_parts(s, scores, tau, lam)
        best, pos = top_k(scores, k)
        return best, np.take_along_axis(cand, pos, 1)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self._need_model("search by text")
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("query text is empty")
        from .embed import Encoder

        return Encoder(self.clip).texts(list(texts))

    def encode_images(self, paths: list[str]) -> np.ndarray:
        self._need_model("search by image")
        import torch

        from .embed import Encoder
        from .errors import ItemError
        from .images import decode_image

        ims = []
        for p in paths:
            try:
                ims.append(self.clip.preprocess(decode_image(str(p))[0]))
            except ItemError as e:
                raise ValueError(f"query image {p}: {e.reason}") from None
        return Encoder(self.clip).images(torch.stack(ims))

    def _need_model(self, what: str) -> None:
        if self.clip is None:
            raise IndexFolderError(f"this Index was opened without a model; pass clip= to {what}")

    def query(self, text: Optional[list[str]] = None, image: Optional[list[str]] = None,
              embedding: Optional[np.ndarray] = None, k: int = 10, target: str = "image",
              return_embeddings: bool = False, **search_kw) -> list[list[dict]]:
        """Search with texts, image paths or raw embeddings; one list of result rows per query."""
        given = [x is not None for x in (text, image, embedding)]
        if sum(given) != 1:
            raise ValueError("give exactly one of text, image or embedding")
        if text is not None:
            q = self.encode_texts([text] if isinstance(text, str) else list(text))
        elif image is not None:
            q = self.encode_images([image] if isinstance(image, (str, os.PathLike)) else list(image))
        else:
            q = np.atleast_2d(np.asarray(embedding, np.float32))
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        scores, ids = self.search(q, k, target, **search_kw)
        out = []
        for sc, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            rows = self.metadata(row_ids[keep])
            embs = self.embeddings(row_ids[keep], target) if return_embeddings else None
            out.append([{**r, "score": float(s), **({"embedding": embs[i]} if return_embeddings else {})}
                        for i, (r, s) in enumerate(zip(rows, sc[keep]))])
        return out

    def search_text(self, texts: list[str], k: int = 10, modality: str = "image") -> list[list[dict]]:
        """Top-k rows per text (plain CLIP cosine) among ``modality`` items."""
        return self.query(text=list(texts), k=k, target=modality)


def open_index(folder: str | os.PathLike, clip: Optional[ClipModel] = None, backend: str = "auto",
               mmap: Optional[bool] = None) -> Index:
    """Open ``folder`` for search (model checked against the manifest when given).

    ``backend``: 'auto' (faiss-gpu if faiss has GPUs, torch if CUDA, else faiss-cpu), or one of them.
    ``mmap``: None memory-maps Flat shards and reads IVF/HNSW shards into RAM; True/False for all.
    """
    return Index(folder, clip, backend=backend, mmap=mmap)
