"""The stored per-item offsets of an opened index (the current bias generation).

One float per item, per shard, method ('bsap' | 'nnn') and target modality: what candidate reranks,
the torch path, Flat shards and exact scans subtract. The combined indexes carry the same offsets as
their extra coordinates, minus the manifest's shifts (``store.combined``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..methods.rerank import LAM_BY_TARGET
from ..store.layout import bias_dir, bias_path
from .shards import ShardSet, reading


def offsets_refusal(manifest: dict, name: str) -> str:
    """Why an index without bias offsets cannot serve BSAP/NNN/hybrid queries: a build that published
    it searchable is computing them (or was stopped before it did), or it never had any."""
    pending = manifest.get("bias_pending")
    if pending:
        return (f"index {name!r} is searchable but its BSAP/NNN offsets (bank {pending.get('bank')}) are still "
                f"being computed; use rerank clip until they are published, or finish them with `retrieval bias` "
                f"or a rerun of the build if it was stopped")
    return f"index {name!r} has no bias offsets; compute them with `retrieval bias`"


class Biases:
    def __init__(self, shards: ShardSet, manifest: Optional[dict] = None):
        self.shards = shards
        self.manifest = manifest if manifest is not None else shards.manifest
        self.section: Optional[dict] = self.manifest.get("bias")
        self.where = bias_dir(self.section)  # the current generation's folder
        self._per_shard: dict[tuple, list[np.ndarray]] = {}
        self._all: dict[tuple, np.ndarray] = {}

    @property
    def available(self) -> bool:
        return self.section is not None

    def require(self) -> None:
        """Raise IndexFolderError naming why when there are no offsets to serve (pending or never
        computed): zero offset coordinates are never served as BSAP/NNN."""
        if self.section is None:
            raise IndexFolderError(offsets_refusal(self.manifest, str(self.shards.folder)))

    def tau(self) -> float:
        """The temperature the offsets were computed with (else the model's logit scale)."""
        return float((self.section or {}).get("tau", self.manifest["model"]["logit_scale"]))

    def lam(self, target: str) -> float:
        """BSAP-H's λ for ``target``: chosen from the index's own pairs by ``retrieval bias``
        (``ops.calibrate``), else the measured default (``LAM_BY_TARGET``)."""
        chosen = (self.section or {}).get("lam") or {}
        return float(chosen.get(target, LAM_BY_TARGET.get(target, LAM_BY_TARGET["image"])))

    def floor(self, query: str, target: str, method: str, lam: float, alpha: float) -> float:
        """The score a non-matching ``query``->``target`` pair reaches 1 % of the time with ``method``,
        recorded by ``retrieval bias`` (``ops.calibrate.nonmatching_floors``); ValueError when the
        folder has none or the query's λ or α differ from the ones it was recorded with."""
        rec = (self.section or {}).get("floor")
        got = None if rec is None else (rec.get("floors") or {}).get(f"{query}->{target}", {}).get(method)
        if got is None:
            raise ValueError(f"no recorded relevance floor for {query}->{target} {method} queries in this index "
                             f"(`retrieval bias` records them; captions are needed for text queries); "
                             f"pass a number to min_score")
        if method == "nnn" and not np.isclose(alpha, rec.get("alpha", 0.75)):
            raise ValueError(f"the nnn floor is recorded for alpha {rec.get('alpha', 0.75)}; pass a number to "
                             f"min_score for alpha {alpha}")
        if method == "hybrid" and not np.isclose(lam, (rec.get("lam") or {}).get(target, lam)):
            raise ValueError(f"the hybrid floor is recorded for lam {rec['lam'][target]}; pass a number to min_score")
        return float(got)

    def per_shard(self, method: str, modality: str) -> list[np.ndarray]:
        """Offsets of ``method`` for targets of ``modality``, one array per shard (zeros for a shard
        without that modality)."""
        key = (method, modality)
        if key not in self._per_shard:
            self.require()
            out = []
            for s in self.shards.shards:
                if modality not in s["index"]:
                    out.append(np.zeros(s["rows"], np.float32))
                    continue
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
        """Offsets of every stored row in shard order (float32 [rows])."""
        key = (method, modality)
        if key not in self._all:
            self._all[key] = np.concatenate(self.per_shard(method, modality)).astype(np.float32)
        return self._all[key]

    def gather(self, method: str, modality: str, ids: np.ndarray) -> np.ndarray:
        """Offsets of global ``ids`` (any shape)."""
        ids = np.asarray(ids, np.int64)
        sh, local = self.shards.locate(np.clip(ids, 0, None).ravel()) if ids.size else (ids, ids)
        flat = np.concatenate([[0], np.cumsum(self.shards.rows)[:-1]])[sh] + local
        return self.all(method, modality)[flat].reshape(ids.shape)

    def shift(self, method: str, modality: str) -> float:
        """The constant subtracted from the offsets in the indexes' extra coordinates."""
        return float((self.section or {}).get("shift", {}).get(method, {}).get(modality, 0.0))
