"""Give a shard's combined index its offsets coordinates (``store.combined``), written once.

- A *pending* index (a first build defers every shard's index until the banks exist, keeping the
  vectors in the npy meanwhile) is built from the npy with its offsets, and the npy is dropped where
  the index codes hold the vectors.
- An IVF ``SQfp16`` index gets the two coordinates rewritten in place in its lists' codes (the lists,
  centroids and tuned nprobe do not change).
- An HNSW graph is rebuilt from its decoded vectors with the offsets: a graph built without them
  finds the BSAP top-k less well (recall@10 0.67 vs 0.72 at the tuned efSearch, measured).
- An IVF-PQ index whose offsets fill a sub-vector of their own (the layout ``store.keys`` chooses)
  gets that sub-quantizer refit and that sub-code rewritten in place (``vectors.set_pq_offsets``),
  on one grid for the whole folder (its bounds in the bias section): the shards' codecs stay equal,
  so they can be merged (``ops.merge``).
- Other lossy indexes (OPQ, SQ8, other PQ layouts) are retrained from their npy with the offsets.

Each rewritten index is a new generation-named file; the caller publishes the manifest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .coarse import read_index, save_index, set_coarse
from .combined import offsets_columns
from .files import save_faiss
from .integrity import file_record
from .layout import EMB_FILE, INDEX_FILE, index_file, trained_file
from .masks import usable_rows
from .vectors import keeps_npy, read_all, set_offsets

METHODS = ("bsap", "nnn")


def _set_file(folder: Path, shard: dict, role: str, rel: Optional[str]) -> None:
    """Point ``shard``'s file ``role`` at ``rel`` (None: drop it) and keep its record in step."""
    if rel is None:
        shard["files"].pop(role, None)
        for field in ("sha256", "bytes", "sample"):
            shard.get(field, {}).pop(role, None)
        return
    shard["files"][role] = rel
    rec = file_record(folder / rel)
    for field in ("sha256", "bytes", "sample"):
        shard.setdefault(field, {})[role] = rec[field]


def index_with_offsets(folder: Path, manifest: dict, shard: dict, modality: str, offsets: Optional[dict],
                       shifts: dict, generation: int, bounds: Optional[list] = None) -> None:
    """Write shard's combined index of ``modality`` with ``offsets`` ({method: [rows]}, None: zeros)
    as its extra coordinates (see the module doc); ``bounds``: the folder's IVF-PQ offsets grid."""
    from .shard import build_combined

    info = shard["index"].get(modality)
    if info is None or info["key"] == "Flat":
        return  # no index: a Flat shard's offsets are applied from the bias files at query time
    d = shard["dim"]
    sh = {m: shifts.get(m, {}).get(modality, 0.0) for m in METHODS}
    settings = {"recall_target": manifest["build"].get("recall_target", 0.95)}
    usable = np.arange(shard["rows"]) if modality == "image" else usable_rows(folder, manifest, shard, modality)
    pending = info.pop("pending", False)
    index = None if pending else read_index(folder, shard["files"][INDEX_FILE[modality]], info)
    if index is not None and "HNSW" not in info["key"]:
        if not set_offsets(index, offsets_columns(offsets, sh, shard["rows"]), d, bounds):
            index = None  # lossy codes: retrained below
    if index is None or "HNSW" in info["key"]:
        index, info["params"], reused = build_combined(folder, manifest, modality, info["key"],
                                                       read_all(folder, shard, modality), usable, offsets, settings,
                                                       seed=shard["id"], keep_trained=pending, shifts=shifts,
                                                       bounds=bounds)
        if pending:
            info["trained_reused"] = reused
        else:
            _retrain_kept(folder, manifest, modality, index, info["params"], generation)
        info["dim"] = int(index.d)
    rel = index_file(shard["id"], modality, generation)
    set_coarse(info, save_index(folder, manifest, modality, rel, index))
    _set_file(folder, shard, INDEX_FILE[modality], rel)
    if not keeps_npy(info["key"]):
        _set_file(folder, shard, EMB_FILE[modality], None)


def build_pending(folder: Path, manifest: dict, generation: int) -> int:
    """Build every deferred index of ``manifest`` with the offsets its bias section has (zeros when
    none), each added to the quantizer trained once across them (``store.quantizer``); returns how many."""
    from .quantizer import train_shared

    train_shared(folder, manifest)
    n = 0
    for s in manifest["shards"]:
        for modality, info in s["index"].items():
            if info.get("pending"):
                index_with_offsets(folder, manifest, s, modality, None, {}, generation)
                n += 1
    return n


def _retrain_kept(folder: Path, manifest: dict, modality: str, index, params: str, generation: int) -> None:
    """After a lossy index was retrained with real offsets, the folder's kept quantizer of the same
    key is replaced by an empty copy of it (appended shards then encode offsets as well)."""
    import faiss

    kept = (manifest.get("trained") or {}).get(modality)
    if kept is None or kept.get("dim") != index.d or kept.get("generation") == generation:
        return
    if not isinstance(faiss.downcast_index(index), faiss.IndexIVF) and "IVF" not in kept["key"]:
        return
    empty = faiss.clone_index(index)
    empty.reset()
    rel = trained_file(modality, generation)
    save_faiss(folder / rel, empty)
    manifest["trained"][modality] = {**kept, "file": rel, "params": params, "generation": generation,
                                     **file_record(folder / rel)}
