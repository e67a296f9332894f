"""The stored per-item offsets of an opened index (``bias/``) and its bias-augmented indexes.

``Biases`` reads what ``retrieval bias`` wrote: per shard, method ('bsap' | 'nnn') and target
modality, one float per item; for non-Flat shards, the augmented faiss index over [e, -(c - shift)]
(Flat shards get theirs built in memory on first use, from the stored embeddings).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..methods.augmented import build_augmented
from ..store.layout import augmented_path, bias_dir, bias_path
from .shards import ShardSet, read_shard_index, reading

AUGMENTED_CACHE = 4  # augmented index sets kept (one per modality x method; any α)
log = logging.getLogger("retrieval.query")


class Biases:
    def __init__(self, shards: ShardSet, manifest: Optional[dict] = None):
        self.shards = shards
        self.manifest = manifest if manifest is not None else shards.manifest
        self.section: Optional[dict] = self.manifest.get("bias")
        self.where = bias_dir(self.section)  # the current generation's folder
        self._per_shard: dict[tuple, list[np.ndarray]] = {}
        self._all: dict[tuple, np.ndarray] = {}
        self._augmented: dict[tuple, Optional[list]] = {}

    @property
    def available(self) -> bool:
        return self.section is not None

    def tau(self) -> float:
        """The temperature the offsets were computed with (else the model's logit scale)."""
        return float((self.section or {}).get("tau", self.manifest["model"]["logit_scale"]))

    def per_shard(self, method: str, modality: str) -> list[np.ndarray]:
        """Offsets of ``method`` for targets of ``modality``, one array per shard."""
        key = (method, modality)
        if key not in self._per_shard:
            if self.section is None:
                raise IndexFolderError(f"{self.shards.folder} has no bias/ (build it with compute_biases or "
                                       f"`retrieval bias`)")
            out = []
            for s in self.shards.shards:
                path = bias_path(self.shards.folder, method, modality, s["id"], self.where)
                if not path.exists():
                    raise IndexFolderError(f"missing {path}; recompute with `retrieval bias`")
                with reading(path):
                    arr = np.load(path)
                if len(arr) != s["rows"]:
                    raise IndexFolderError(f"{path} has {len(arr)} rows, shard has {s['rows']}")
                out.append(arr)
            self._per_shard[key] = out
        return self._per_shard[key]

    def all(self, method: str, modality: str) -> np.ndarray:
        """Offsets of every item in global id order (float32 [N])."""
        key = (method, modality)
        if key not in self._all:
            self._all[key] = np.concatenate(self.per_shard(method, modality)).astype(np.float32)
        return self._all[key]

    def gather(self, method: str, modality: str, ids: np.ndarray) -> np.ndarray:
        """Offsets of global ``ids`` (any shape)."""
        return self.all(method, modality)[ids]

    def shift(self, method: str, modality: str) -> float:
        """The constant subtracted from the offsets in the augmented indexes (0 for older folders)."""
        return float((self.section or {}).get("shift", {}).get(method, {}).get(modality, 0.0))

    def augmented(self, modality: str, method: str) -> Optional[list]:
        """Per-shard augmented indexes (stored ones for non-Flat shards, in-memory Flat ones), or None
        when a non-Flat shard has none stored (the caller then scans exactly with numpy)."""
        key = (modality, method)
        if key in self._augmented:
            return self._augmented[key]
        while len(self._augmented) >= AUGMENTED_CACHE:  # bounded: Flat copies hold N x (d+1) floats
            self._augmented.pop(next(iter(self._augmented)))
        shards, folder = self.shards, self.shards.folder
        missing = [s["id"] for s in shards.shards if s["index"][modality]["key"] != "Flat"
                   and not augmented_path(folder, method, modality, s["id"], self.where).exists()]
        if missing:  # remembered, so the warning and this check happen once per method and modality
            log.warning("%s: no augmented index for shard(s) %s (re-run `retrieval bias`); "
                        "exact %s search falls back to a numpy scan", folder, missing, method)
            self._augmented[key] = None
            return None
        offsets, shift = self.per_shard(method, modality), self.shift(method, modality)
        out = []
        for s, emb, off, plain in zip(shards.shards, shards.embeddings(modality), offsets, shards.faiss[modality]):
            info = s["index"][modality]
            if info["key"] == "Flat":
                out.append(build_augmented(plain, "Flat", emb, off, shift))
                continue
            path = augmented_path(folder, method, modality, s["id"], self.where)
            ix = read_shard_index(path, info, shards.mmap, shards.search_params)
            if ix.ntotal != s["rows"]:
                raise IndexFolderError(f"{path} holds {ix.ntotal} vectors, shard has {s['rows']}")
            out.append(ix)
        self._augmented[key] = out
        return out
