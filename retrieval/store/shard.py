"""Write one shard's files: metadata, caption mask, full-text index, and per modality its vectors, stored once.

Per modality (``settings["modalities"]``; text only when some row has a caption):
- ``Flat``: the fp16 npy, searched with BLAS; no faiss file.
- IVF / HNSW: one combined ``SQfp16`` index over [e, -c_bsap, -c_nnn] (``store.combined``), the
  only copy of the vectors; PQ and other lossy keys: the combined index plus the npy.
The offsets coordinates are the bias offsets when the folder has banks (appends), else zeros until
``compute_biases`` writes them. Rows without a caption get a zero text embedding and are marked in
``captions/captions_{k}.npy``. When the folder holds a trained empty index of the same key
(``faiss/trained_{modality}.index``), the shard is added to a copy of it with its tuned parameters:
appended shards cost what first-build shards cost.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .cast import cast
from .coarse import save_index, set_coarse
from .combined import EXTRA, add_combined, combine_vectors, combined_layout, offsets_at, offsets_columns
from .faiss_index import build_faiss_index, gpu_for, new_index, trained_empty, tune_params, tune_queries
from .files import save_faiss, save_npy, save_parquet
from .integrity import file_record
from .keys import shard_key, training_rows
from .fts import DEFAULT_COLUMNS, fts_files, row_texts, write_fts
from .layout import EMB_FILE, INDEX_FILE, MODALITIES, caption_file, fts_file, index_file, shard_files, trained_file
from .masks import pack
from .vectors import built_key, keeps_npy, set_pq_offsets

log = logging.getLogger("retrieval.build")


def _trained(out: Path, manifest: dict, modality: str, key: str, dim: int):
    """The folder's trained empty index of ``modality`` if it is of ``key`` at ``dim``, else None."""
    import faiss

    entry = (manifest.get("trained") or {}).get(modality)
    if entry is None or entry["key"] != key or entry.get("dim", dim) != dim:
        return None
    return faiss.read_index(str(out / entry["file"]))


def _keep_trained(out: Path, manifest: dict, modality: str, key: str, index, params: str) -> None:
    """Save an empty copy of a freshly trained index, the first time one is trained for ``modality``
    (with its tuned search parameters: shards added to the same quantizer reuse them)."""
    import faiss

    if (manifest.get("trained") or {}).get(modality) is not None or not index.is_trained:
        return
    if not new_index(index.d, key).is_trained:  # it needed training
        empty = faiss.clone_index(index)
        empty.reset()
        rel = trained_file(modality)
        save_faiss(out / rel, empty)
        manifest.setdefault("trained", {})[modality] = {"key": key, "dim": int(index.d), "file": rel,
                                                        "params": params, **file_record(out / rel)}


def build_combined(out: Path, manifest: dict, modality: str, key: str, vecs: np.ndarray, usable: np.ndarray,
                   offsets: Optional[dict], settings: dict, seed: int, keep_trained: bool = True,
                   shifts: Optional[dict] = None, bounds: Optional[list] = None):
    """(index, params, reused quantizer?) of the combined index of ``key`` over ``vecs`` [n, d];
    ``keep_trained=False`` neither reuses nor saves the folder's trained quantizer. ``shifts``
    ({method: {modality: s}}) and ``bounds`` (the IVF-PQ offsets grid's, ``vectors.offsets_bounds``)
    default to the manifest's bias section's."""
    import faiss

    d = vecs.shape[1]
    fkey, dim = combined_layout(key, d)
    if shifts is None:
        shifts = (manifest.get("bias") or {}).get("shift") or {}
    sh = {m: shifts.get(m, {}).get(modality, 0.0) for m in EXTRA}
    if bounds is None:
        bounds = ((manifest.get("bias") or {}).get("offsets_bounds") or {}).get(modality)
    trained = _trained(out, manifest, modality, fkey, dim) if keep_trained else None
    params = manifest["trained"][modality].get("params") if trained is not None else None
    truth = None
    if gpu_for(fkey):  # one GPU round trip: train and add the whole combined array there
        x = combine_vectors(vecs, offsets, sh, dim)
        index = build_faiss_index(x, fkey, seed=seed, trained=trained, train_rows=usable, extra=dim - d)
    else:  # on the CPU: train on a sample, then add chunk by chunk (no [n, dim] float32 copy)
        if trained is not None:
            index = faiss.clone_index(trained)
        else:
            rows = training_rows(usable, fkey, seed)
            index = trained_empty(combine_vectors(vecs[rows], offsets_at(offsets, rows), sh, dim), fkey,
                                  extra=dim - d, use_gpu=False)
        queries = tune_queries(vecs, seed=seed, query_rows=usable) if params is None and len(usable) else None
        ids = add_combined(index, vecs, offsets, sh, dim, queries=queries)  # the tuning's truth in the same pass
        truth = None if queries is None else (queries, ids)
    if params is None:  # a new quantizer (or one trained before any shard was added): tune, keep
        params = tune_params(index, vecs, fkey, recall=settings["recall_target"], seed=seed, query_rows=usable,
                             truth=truth)
        if trained is not None:
            manifest["trained"][modality]["params"] = params
    elif params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    if trained is None and keep_trained:
        _keep_trained(out, manifest, modality, fkey, index, params)
    if offsets and "PQ" in fkey:   # the offsets sub-quantizer fit to the folder's offsets grid (store.keys)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        if isinstance(ivf, faiss.IndexIVFPQ):
            set_pq_offsets(ivf, offsets_columns(offsets, sh, len(vecs)), d, bounds)
    return index, params, trained is not None


def shard_modalities(settings: dict, has_caption: np.ndarray) -> list[str]:
    """The modalities a shard indexes: those asked for (``settings["modalities"]``, default both),
    text only when some row has a caption."""
    wanted = settings.get("modalities") or MODALITIES
    return [mod for mod in MODALITIES if mod in wanted and len(has_caption) and (mod == "image" or has_caption.any())]


def write_shard(out: Path, manifest: dict, k: int, offset: int, img: np.ndarray, txt: np.ndarray,
                rows, has_caption: np.ndarray, schema, settings: dict, offsets: Optional[dict] = None,
                defer: bool = False) -> dict:
    """Write shard ``k`` (global ids from ``offset``) and return its manifest entry. ``offsets``:
    {modality: {"bsap": [n], "nnn": [n]}} for the combined indexes' extra coordinates (None: zeros).
    ``defer``: keep the vectors in the npy and mark the indexes pending (``store.offsets`` builds
    them once the offsets exist)."""
    n, d = img.shape
    all_files = shard_files(k)
    files = {"metadata": all_files["metadata"]}
    captioned = np.flatnonzero(has_caption)
    entry: dict = {"id": k, "rows": n, "offset": offset, "dim": int(d), "captionless": int(n - len(captioned)),
                   "files": files, "index": {}}
    if entry["captionless"]:
        files["captions"] = caption_file(k)
        save_npy(out / files["captions"], pack(has_caption))
    save_parquet(out / files["metadata"], rows, schema, (k, offset))
    build = manifest.get("build") or {}
    if build.get("fts"):
        entry["fts"] = fulltext_entry(out, k, row_texts(rows, build.get("text_columns") or DEFAULT_COLUMNS))
    wanted = shard_modalities(settings, has_caption)
    for modality, vecs in zip(MODALITIES, (img, txt)):
        usable = np.arange(n) if modality == "image" else captioned
        if modality not in wanted:
            continue
        requested = shard_key(len(usable), d, settings["memory_budget"], settings["index_key"],
                              settings.get("total_rows"))
        if settings["index_key"] and requested != settings["index_key"]:  # an append's small shard is by design
            (log.info if manifest.get("shards") else log.warning)(
                "shard %d has %d %s rows, too few for %s; using %s (`retrieval compact` merges small shards)", k,
                len(usable), modality, settings["index_key"], requested)
        key = built_key(requested)
        t0 = time.perf_counter()
        info = {"key": key, "requested": requested, "params": "", "ntotal": n, "dim": int(d), "trained_reused": False}
        pending = defer and key != "Flat"
        if keeps_npy(key) or pending:
            files[EMB_FILE[modality]] = all_files[EMB_FILE[modality]]
            save_npy(out / files[EMB_FILE[modality]], np.asarray(vecs, np.float16))
        if pending:
            info["pending"] = True
        elif key != "Flat":
            index, info["params"], info["trained_reused"] = build_combined(
                out, manifest, modality, key, vecs, usable, (offsets or {}).get(modality), settings, seed=k)
            files[INDEX_FILE[modality]] = index_file(k, modality)
            set_coarse(info, save_index(out, manifest, modality, files[INDEX_FILE[modality]], index))
            info["dim"] = int(index.d)
        info["build_s"] = round(time.perf_counter() - t0, 3)
        entry["index"][modality] = info
    records = {name: file_record(out / rel) for name, rel in files.items()}
    for field in ("sha256", "bytes", "sample"):
        entry[field] = {name: r[field] for name, r in records.items()}
    return entry


def fulltext_entry(out: Path, k: int, texts: list[str]) -> dict:
    """Write shard ``k``'s full-text folder; its manifest record {"dir", "docs", "files": {rel: record}}."""
    rel = fts_file(k)
    info = write_fts(out / rel, texts)
    return {"dir": rel, **info, "files": {f: file_record(out / f) for f in fts_files(out, rel)}}


def zero_text_rows(txt: Optional[np.ndarray], has_caption: np.ndarray, n: int, dim: int) -> np.ndarray:
    """Text embeddings for all ``n`` rows: the captioned rows' vectors, zeros elsewhere."""
    if txt is not None and len(txt) == n and has_caption.all():
        return cast(txt, np.float16)  # a copy: the caller keeps its array
    out = np.zeros((n, dim), np.float16)
    if txt is not None and len(txt):
        out[np.flatnonzero(has_caption)] = txt
    return out
