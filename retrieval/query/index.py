"""``open_index`` and :class:`Index`: the query API over one index folder.

The Index only wires the parts together and encodes queries: the shard set (open + checks), the
stored biases, the metadata reader and the searcher; a search goes Index -> rerank method ->
modality engine -> backend and comes straight back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..embed import ClipModel, describe, same_model
from ..errors import IndexFolderError, ItemError
from ..store.integrity import verify as full_verify
from ..store.manifest import recorded_model, require_manifest
from .backends import pick_backend
from .biases import Biases
from .metadata import MetadataReader
from .rerankers import Clip, make_method
from .searcher import Searcher
from .shards import ShardSet


class Index:
    """A built index folder, opened read-only (see :func:`open_index` for the arguments)."""

    def __init__(self, folder: str | os.PathLike, clip: Optional[ClipModel] = None, mmap: Optional[bool] = None,
                 backend: str = "auto", search_params: Optional[str] = None, verify: bool = False):
        self.folder = Path(folder)
        m = require_manifest(self.folder)
        if verify:
            check = full_verify(self.folder, m)
            if not check.ok:
                rel, why = check.problems[0]
                more = f" (and {len(check.problems) - 1} more file(s))" if len(check.problems) > 1 else ""
                raise IndexFolderError(f"{self.folder / rel}: {why}{more}")
        if not m.get("complete"):
            raise IndexFolderError(f"{self.folder} is incomplete; re-run its build to finish it")
        self.manifest, self.clip = m, None
        if clip is not None:
            self.attach_model(clip)
        self.shard_set = ShardSet(self.folder, m, mmap, search_params)
        self.biases = Biases(self.shard_set)
        self.meta = MetadataReader(self.shard_set)
        self.backend_name = pick_backend(backend)
        self.searcher = Searcher(self.shard_set, self.biases, self.backend_name)

    def attach_model(self, clip: ClipModel) -> None:
        """Use ``clip`` to encode queries; it must be the model the index was built with."""
        if not same_model(self.manifest["model"], clip.identity):
            raise IndexFolderError(f"{self.folder} was built with {describe(self.manifest['model'])}; "
                                   f"the query model is {describe(clip.identity)}")
        self.clip = clip

    @property
    def shards(self) -> list[dict]:
        """The manifest entries of the non-empty shards."""
        return self.shard_set.shards

    @property
    def offsets(self) -> np.ndarray:
        """Global id of each shard's first row."""
        return self.shard_set.starts

    def __len__(self) -> int:
        return len(self.shard_set)

    @property
    def dim(self) -> int:
        return self.shard_set.dim

    def search_vectors(self, queries: np.ndarray, k: int = 10, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of L2-normalised ``queries`` [n, d] over all shards of ``modality``."""
        return self.searcher.search(queries, k, modality, Clip())

    def search(self, queries: np.ndarray, k: int = 10, target: str = "image", rerank: str = "clip",
               candidates: Optional[int] = None, tau: Optional[float] = None, lam: float = 0.5,
               alpha: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of query embeddings among ``target`` items.

        ``rerank``: 'clip' (cosine), 'bsap' (balanced score b_j), 'hybrid' (BSAP-H), 'nnn'
        (s - α bias). BSAP and NNN search the whole corpus exactly with the stored ``bias/`` offsets;
        with ``candidates=N`` any method reranks CLIP's top N instead (hybrid always does: default
        N = max(k, 1000)).
        """
        tau = float(tau if tau is not None else self.biases.tau())
        method = make_method(rerank, tau, candidates, lam, alpha)
        return self.searcher.search(queries, k, target, method)

    def metadata(self, ids) -> list[dict]:
        """Metadata rows for global ids, in order (only the Parquet row groups holding them are read)."""
        return self.meta.rows(ids)

    def embeddings(self, ids, modality: str = "image") -> np.ndarray:
        """Stored (fp16) embeddings of global ``ids`` as float32 [..., d]."""
        return self.shard_set.gather(ids, modality)

    # ---- queries from texts and images ------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self._need_model("search by text")
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("query text is empty")
        from ..embed import Encoder

        return Encoder(self.clip).texts(list(texts))

    def encode_images(self, paths: list[str]) -> np.ndarray:
        self._need_model("search by image")
        import torch

        from ..corpus.images import decode_image
        from ..embed import Encoder

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
            norms = np.linalg.norm(q, axis=1, keepdims=True)
            if not np.isfinite(q).all() or (norms == 0).any():
                raise ValueError("a query embedding is all zeros or holds NaN or infinite values")
            q = q / norms
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


def open_index(folder: str | os.PathLike, clip: Union[ClipModel, str, None] = None, backend: str = "auto",
               mmap: Optional[bool] = None, search_params: Optional[str] = None, verify: bool = False) -> Index:
    """Open ``folder`` for search (model checked against the manifest when given).

    ``clip``: a loaded model, None (search by embeddings only), or 'auto' to load the model the
    manifest records. ``backend``: 'auto' (faiss-gpu if faiss has GPUs, torch if CUDA, else
    faiss-cpu), or one of them. ``mmap``: None memory-maps Flat shards and reads IVF/HNSW shards
    into RAM; True/False for all. ``search_params`` (e.g. 'nprobe=16' or 'efSearch=128') replaces the
    build's tuned parameters of every non-Flat shard. Opening always checks every file's size and a
    sampled fingerprint against the manifest; ``verify=True`` first checks every byte (sha256).
    """
    auto = isinstance(clip, str)
    if auto and clip != "auto":
        raise ValueError(f"clip must be a loaded model, None or 'auto', got {clip!r}")
    index = Index(folder, None if auto else clip, backend=backend, mmap=mmap, search_params=search_params,
                  verify=verify)
    if auto:  # the files are checked before the model is loaded
        index.attach_model(recorded_model(folder))
    return index
