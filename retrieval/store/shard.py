"""Write one shard's files: embeddings, metadata, caption mask, one faiss index per modality.

Rows without a caption get a zero text embedding and are marked in ``captions/captions_{k}.npy``
(searches of the text modality never return them). A modality's index key follows the rule for the
rows it can serve (captioned rows for text). When the folder holds a trained empty index of that key
(``faiss/trained_{modality}.index``, saved by the first shard that trained one), the shard is added to
a copy of it instead of training again: appended shards cost what first-build shards cost.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .faiss_index import build_faiss_index, tune_params
from .integrity import file_record
from .keys import shard_key
from .layout import EMB_FILE, INDEX_FILE, MODALITIES, caption_file, shard_files, trained_file
from .masks import pack
from .files import save_faiss, save_npy, save_parquet

log = logging.getLogger("retrieval.build")


def _trained(out: Path, manifest: dict, modality: str, key: str):
    """The folder's trained empty index of ``modality`` if it is of ``key``, else None."""
    import faiss

    entry = (manifest.get("trained") or {}).get(modality)
    if entry is None or entry["key"] != key:
        return None
    return faiss.read_index(str(out / entry["file"]))


def _keep_trained(out: Path, manifest: dict, modality: str, key: str, index, params: str) -> None:
    """Save an empty copy of a freshly trained index, the first time one is trained for ``modality``
    (with its tuned search parameters: shards added to the same quantizer reuse them)."""
    import faiss

    if (manifest.get("trained") or {}).get(modality) is not None or index.is_trained is False:
        return
    if not faiss.index_factory(index.d, key, faiss.METRIC_INNER_PRODUCT).is_trained:  # it needed training
        empty = faiss.clone_index(index)
        empty.reset()
        rel = trained_file(modality)
        save_faiss(out / rel, empty)
        manifest.setdefault("trained", {})[modality] = {"key": key, "file": rel, "params": params,
                                                        **file_record(out / rel)}


def write_shard(out: Path, manifest: dict, k: int, offset: int, img: np.ndarray, txt: np.ndarray,
                rows: list[dict], has_caption: np.ndarray, schema, settings: dict) -> dict:
    """Write shard ``k`` (global ids from ``offset``) and return its manifest entry."""
    n = len(rows)
    files = shard_files(k)
    captioned = np.flatnonzero(has_caption)
    entry: dict = {"id": k, "rows": n, "offset": offset, "captionless": int(n - len(captioned)),
                   "files": files, "index": {}}
    if entry["captionless"]:
        files["captions"] = caption_file(k)
        save_npy(out / files["captions"], pack(has_caption))
    save_npy(out / files["img_emb"], img)
    save_npy(out / files["text_emb"], txt)
    save_parquet(out / files["metadata"], rows, schema, (k, offset))
    for modality, vecs in zip(MODALITIES, (img, txt)):
        usable = np.arange(n) if modality == "image" else captioned
        if n == 0:
            continue
        key = shard_key(max(len(usable), 1), vecs.shape[1], settings["memory_budget"], settings["index_key"])
        if settings["index_key"] and key != settings["index_key"]:
            log.warning("shard %d has %d rows, too few to train %s; using %s", k, len(usable), settings["index_key"], key)
        t0 = time.perf_counter()
        trained = _trained(out, manifest, modality, key)
        index = build_faiss_index(vecs, key, seed=k, trained=trained, train_rows=usable)
        params = (manifest["trained"][modality].get("params") if trained is not None else None)
        if params is None:  # a new quantizer (or one saved before its parameters were kept): tune
            params = tune_params(index, vecs, key, recall=settings["recall_target"], seed=k, query_rows=usable)
        elif params:
            import faiss

            faiss.ParameterSpace().set_index_parameters(index, params)
        if trained is None:
            _keep_trained(out, manifest, modality, key, index, params)
        save_faiss(out / files[INDEX_FILE[modality]], index)
        entry["index"][modality] = {"key": key, "params": params, "ntotal": int(index.ntotal),
                                    "trained_reused": trained is not None, "build_s": round(time.perf_counter() - t0, 3)}
    records = {name: file_record(out / rel) for name, rel in files.items() if n > 0 or not name.endswith("_index")}
    for field in ("sha256", "bytes", "sample"):
        entry[field] = {name: r[field] for name, r in records.items()}
    return entry


def embeddings_of(out: Path, shard: dict, modality: str) -> np.ndarray:
    """A committed shard's stored embeddings of ``modality`` (memory-mapped)."""
    return np.load(out / shard["files"][EMB_FILE[modality]], mmap_mode="r")


def zero_text_rows(txt: Optional[np.ndarray], has_caption: np.ndarray, n: int, dim: int) -> np.ndarray:
    """Text embeddings for all ``n`` rows: the captioned rows' vectors, zeros elsewhere."""
    out = np.zeros((n, dim), np.float16)
    if txt is not None and len(txt):
        out[np.flatnonzero(has_caption)] = txt
    return out
