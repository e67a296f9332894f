"""The indexer: corpus -> embedded shards (npy + Parquet + faiss), resumable; or precomputed
embeddings -> shards.

Resumable: a shard is committed (npy, parquet, faiss files, errors.jsonl, then manifest.json, each
written atomically) before the next starts; the manifest records the input position each shard ends
at, so a re-run of the same build skips what is committed and carries on. Per-item bias offsets are
not computed here: the build entry points (:mod:`retrieval.ops.build`) add them after the shards.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..corpus import CorpusReader
from ..embed import ClipModel, Encoder, describe, iter_batches, same_model
from ..errors import CorpusError, IndexFolderError, StorageError, UsageError
from .atomic import remove_stale_temps
from .faiss_index import validate_key
from .layout import ERRORS
from .lock import write_lock
from .manifest import load_manifest, new_manifest, save_manifest
from .writer import ShardWriter, read_errors

log = logging.getLogger("retrieval.build")
DEFAULT_SHARD_SIZE = 100_000
DEFAULT_MEMORY_BUDGET = 4 * 2**30
_RESUME_KEYS = ("shard_size", "index_key", "memory_budget", "max_pixels")


def check_index_key(index_key: Optional[str], dim: int) -> None:
    """A forced ``--index-key`` must be one faiss can build at ``dim``; checked before any embedding."""
    if index_key:
        try:
            validate_key(index_key, dim)
        except ValueError as e:
            raise IndexFolderError(f"--index-key: {e}") from None


def check_out(out: Path) -> None:
    """Whether ``out`` can become an index folder, without creating anything (checked before the
    model is loaded): not a file, and its nearest existing ancestor a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create --out {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create --out {out}: {probe} is not writable")


def prepare_out(out: Path) -> None:
    """Create the output folder, or say in one line why it cannot be one."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or type(e).__name__}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} is not writable")


def committed(manifest: dict) -> str:
    """What a folder holds so far, for messages: shards, rows and bytes."""
    shards = manifest["shards"]
    size = sum(sum(s.get("bytes", {}).values()) for s in shards)
    return f"{len(shards)} shard(s), {sum(s['rows'] for s in shards)} items, {size / 2**20:.1f} MiB"


def _check_existing(out: Path, clip: ClipModel, reader: CorpusReader, settings: dict) -> Optional[dict]:
    m = load_manifest(out)
    if m is None:
        return None
    if not same_model(m["model"], clip.identity):
        raise IndexFolderError(f"{out} holds an index of {describe(m['model'])}, not {describe(clip.identity)}; "
                               f"use another --out", usage=True)
    if m["corpus"] != reader.describe():
        raise IndexFolderError(f"{out} was built from another corpus ({m['corpus'].get('path')}); use another --out",
                               usage=True)
    diff = ", ".join(f"{k}={m['build'].get(k)}" for k in _RESUME_KEYS if m["build"].get(k) != settings.get(k))
    if diff:
        raise IndexFolderError(f"{out} was built with other settings ({diff}); "
                               f"re-run with the same ones or use another --out", usage=True)
    return m


def index_corpus(reader: CorpusReader, out: str | Path, clip: ClipModel, settings: dict,
                 progress: bool = True) -> tuple[dict, bool]:
    """Embed ``reader``'s items into shards under ``out`` (or resume); returns (manifest, whether
    anything was left to do). ``settings``: shard_size, index_key, memory_budget, max_pixels,
    batch_size, workers, recall_target (see :func:`retrieval.build_index`)."""
    t_start = time.perf_counter()
    out = Path(out)
    settings = {**settings, "dim": clip.dim}
    check_index_key(settings["index_key"], clip.dim)
    manifest = _check_existing(out, clip, reader, settings)
    if manifest is not None and manifest.get("complete"):
        return manifest, False
    prepare_out(out)
    with write_lock(out):
        try:
            return _embed_into(reader, out, clip, settings, manifest, progress, t_start)
        except StorageError as e:
            m = load_manifest(out) or {"shards": []}
            raise StorageError(f"{e}; {committed(m)} committed: free space and re-run the same command "
                               f"to resume") from None


def _embed_into(reader: CorpusReader, out: Path, clip: ClipModel, settings: dict, manifest: Optional[dict],
                progress: bool, t_start: float) -> tuple[dict, bool]:
    remove_stale_temps(out)
    if manifest is None:
        manifest = new_manifest(clip.identity, reader.describe(), dict(settings))
    start_pos = manifest["shards"][-1]["end_pos"] if manifest["shards"] else 0
    resumed = len(manifest["shards"])
    writer = ShardWriter(out, manifest, reader.metadata_schema, settings, read_errors(out, start_pos))
    writer.last_end = start_pos
    encoder = Encoder(clip)
    t_model = 0.0
    n_new = n_skipped = 0
    from tqdm import tqdm

    bar = tqdm(desc="embedding", unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               initial=start_pos, mininterval=0.5)
    try:
        for batch in iter_batches(reader, clip.preprocess, clip.tokenizer, settings["batch_size"],
                                  settings["workers"], start_pos, settings["max_pixels"]):
            if batch.rows:
                t0 = time.perf_counter()
                img = encoder.images(batch.images)
                txt = encoder.tokens(batch.tokens)
                t_model += time.perf_counter() - t0
                positions = [r.pop("_pos") for r in batch.rows]
                n_new += len(batch.rows)
            else:
                img = txt = np.zeros((0, clip.dim), np.float32)
                positions = []
            writer.add(img, txt, batch.rows, positions, batch.errors, batch.end_pos)
            bar.update(batch.end_pos - batch.first_pos)
            n_skipped += sum(e["action"] == "skipped" for e in batch.errors)
            bar.set_postfix(shards=len(manifest["shards"]), skipped=n_skipped)
        writer.finish()
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_start
    counts = manifest["counts"]
    manifest["complete"] = True
    manifest["stats"] = {
        "elapsed_s": round(elapsed, 3), "model_s": round(t_model, 3), "new_rows": n_new,
        "rows_per_s": round(n_new / elapsed, 3) if elapsed else None, "resumed_from_shard": resumed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if counts["rows"] == 0:
        save_manifest(out, manifest | {"complete": False})
        corpus = reader.describe().get("path")
        raise CorpusError(f"no usable items in {corpus}: {counts['skipped']} skipped, see {out / ERRORS}")
    save_manifest(out, manifest)
    return manifest, True


def write_embeddings(out: str | Path, image_emb: np.ndarray, text_emb: np.ndarray, model: dict,
                     rows: Optional[list[dict]] = None, *, shard_size: int = DEFAULT_SHARD_SIZE,
                     index_key: Optional[str] = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                     recall_target: float = 0.95) -> dict:
    """Shards from precomputed, row-aligned embeddings; returns the (complete) manifest."""
    import pyarrow as pa

    img, txt = np.asarray(image_emb), np.asarray(text_emb)
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"image and text embeddings must be 2-D and row-aligned, got {img.shape} and {txt.shape}")
    rows = rows if rows is not None else [{"key": str(i), "image_path": "", "caption": ""} for i in range(len(img))]
    if len(rows) != len(img):
        raise ValueError(f"{len(rows)} metadata rows for {len(img)} embeddings")
    if len({r["key"] for r in rows}) != len(rows):
        raise ValueError("metadata keys must be unique")
    out = Path(out)
    if load_manifest(out) is not None:
        raise IndexFolderError(f"{out} already holds an index; use another folder", usage=True)
    model = {"embed_dim": img.shape[1], "logit_scale": 100.0, "context_length": 77, **model}
    settings = {"shard_size": shard_size, "index_key": index_key, "memory_budget": memory_budget,
                "recall_target": recall_target, "dim": img.shape[1], "max_pixels": None}
    manifest = new_manifest(model, {"type": "embeddings", "path": None}, dict(settings))
    prepare_out(out)
    with write_lock(out):
        schema = pa.Table.from_pylist(rows[:1]).schema
        writer = ShardWriter(out, manifest, schema, settings, [])
        writer.last_end = 0
        for start in range(0, len(img), shard_size):
            sl = slice(start, start + shard_size)
            writer.add(np.asarray(img[sl], np.float32), np.asarray(txt[sl], np.float32), rows[sl],
                       list(range(start, min(start + shard_size, len(img)))), [], min(start + shard_size, len(img)))
        writer.finish()
        manifest["complete"] = True
        save_manifest(out, manifest)
    return manifest
