"""``build_index``: corpus -> embeddings shards + metadata + one faiss index per shard and modality.

Resumable: a shard is committed (npy, parquet, faiss files, errors.jsonl, then manifest.json, each
written atomically) before the next starts; the manifest records the input position each shard ends
at, so a re-run of the same build skips what is committed and carries on.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_path, remove_stale_temps, write_bytes
from .embed import Encoder, iter_batches
from .errors import CorpusError, IndexFolderError
from .images import DEFAULT_MAX_PIXELS
from .index_factory import build_index as build_faiss, shard_key, tune_params, validate_key
from .manifest import load_manifest, new_manifest, save_manifest, shard_files
from .models import ClipModel, describe, load_model, same_model, sha256_file
from .readers import CorpusReader, open_corpus

log = logging.getLogger("retrieval.build")
DEFAULT_SHARD_SIZE = 100_000
DEFAULT_MEMORY_BUDGET = 4 * 2**30
ERRORS = "errors.jsonl"
_RESUME_KEYS = ("shard_size", "index_key", "memory_budget", "max_pixels")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


METADATA_ROW_GROUP = 4096  # small row groups: a query reads only the groups its results live in


def _save_parquet(path: Path, rows: list[dict], schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=METADATA_ROW_GROUP)


def _save_faiss(path: Path, index) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, tmp)


def _read_errors(out: Path, before_pos: int) -> list[dict]:
    path = out / ERRORS
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("pos", 0) < before_pos]


def _write_errors(out: Path, errors: list[dict]) -> None:
    write_bytes(out / ERRORS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors).encode())


class _ShardWriter:
    """Accumulates rows and commits full shards (files first, manifest last)."""

    def __init__(self, out: Path, manifest: dict, schema, settings: dict, errors: list[dict]):
        self.out, self.manifest, self.schema, self.s = out, manifest, schema, settings
        self.errors = errors  # committed errors (pos < last committed end_pos)
        self.pending_errors: list[dict] = []
        self.img: list[np.ndarray] = []
        self.txt: list[np.ndarray] = []
        self.rows: list[dict] = []
        self.row_pos: list[int] = []

    @property
    def n(self) -> int:
        return len(self.rows)

    def add(self, img: np.ndarray, txt: np.ndarray, rows: list[dict], positions: list[int], errors: list[dict],
            end_pos: int) -> None:
        self.pending_errors.extend(errors)
        shard_size = self.s["shard_size"]
        start = 0
        while start < len(rows):
            take = min(shard_size - self.n, len(rows) - start)
            self.img.append(img[start:start + take].astype(np.float16))  # buffer what is written
            self.txt.append(txt[start:start + take].astype(np.float16))
            self.rows.extend(rows[start:start + take])
            self.row_pos.extend(positions[start:start + take])
            start += take
            if self.n == shard_size:
                self.commit(self.row_pos[-1] + 1)
        self.last_end = end_pos

    def commit(self, end_pos: int) -> None:
        shards = self.manifest["shards"]
        k = len(shards)
        files = shard_files(k)
        empty = np.zeros((0, self.s["dim"]), np.float16)
        img = np.concatenate(self.img) if self.img else empty
        txt = np.concatenate(self.txt) if self.txt else empty
        n = len(self.rows)
        entry = {"id": k, "rows": n, "offset": sum(s["rows"] for s in shards), "end_pos": end_pos,
                 "files": files, "index": {}}
        _save_npy(self.out / files["img_emb"], img)
        _save_npy(self.out / files["text_emb"], txt)
        _save_parquet(self.out / files["metadata"], self.rows, self.schema)
        for modality, vecs in (("image", img), ("text", txt)):
            if n == 0:
                continue
            key = shard_key(n, vecs.shape[1], self.s["memory_budget"], self.s["index_key"])
            if self.s["index_key"] and key != self.s["index_key"]:
                log.warning("shard %d has %d rows, too few to train %s; using %s", k, n, self.s["index_key"], key)
            t0 = time.perf_counter()
            index = build_faiss(vecs, key, seed=k)
            params = tune_params(index, vecs, key, recall=self.s["recall_target"], seed=k)
            _save_faiss(self.out / files[f"{modality}_index"], index)
            entry["index"][modality] = {"key": key, "params": params, "ntotal": int(index.ntotal),
                                        "build_s": round(time.perf_counter() - t0, 3)}
        entry["sha256"] = {name: sha256_file(self.out / rel) for name, rel in files.items()
                           if (self.out / rel).exists() and (n > 0 or not name.endswith("_index"))}
        done = [e for e in self.pending_errors if e["pos"] < end_pos]
        self.pending_errors = [e for e in self.pending_errors if e["pos"] >= end_pos]
        self.errors.extend(done)
        _write_errors(self.out, self.errors)
        shards.append(entry)
        self._update_counts(end_pos)
        save_manifest(self.out, self.manifest)
        self.img, self.txt, self.rows, self.row_pos = [], [], [], []

    def finish(self) -> None:
        """Commit the last partial shard; trailing skipped items are logged without an empty shard."""
        if self.n:
            self.commit(self.last_end)
        self.errors.extend(self.pending_errors)
        self.pending_errors = []
        _write_errors(self.out, self.errors)
        self._update_counts(self.last_end)

    def _update_counts(self, inputs: int) -> None:
        by_action = Counter(e["action"] for e in self.errors)
        self.manifest["counts"] = {
            "rows": sum(s["rows"] for s in self.manifest["shards"]),
            "inputs": inputs,
            "skipped": by_action.get("skipped", 0),
            "repaired": len({e["pos"] for e in self.errors if e["action"] == "repaired"}),
            "skipped_by_stage": dict(Counter(e["stage"] for e in self.errors if e["action"] == "skipped")),
        }


def _check_existing(out: Path, clip: ClipModel, reader: CorpusReader, settings: dict) -> Optional[dict]:
    m = load_manifest(out)
    if m is None:
        return None
    if not same_model(m["model"], clip.identity):
        raise IndexFolderError(f"{out} holds an index of {describe(m['model'])}, not {describe(clip.identity)}; "
                               f"use another --out")
    if m["corpus"] != reader.describe():
        raise IndexFolderError(f"{out} was built from another corpus ({m['corpus'].get('path')}); use another --out")
    diff = ", ".join(f"{k}={m['build'].get(k)}" for k in _RESUME_KEYS if m["build"].get(k) != settings.get(k))
    if diff:
        raise IndexFolderError(f"{out} was built with other settings ({diff}); "
                               f"re-run with the same ones or use another --out")
    return m


def build_index(corpus: str | os.PathLike, out: str | os.PathLike, model: str = "ViT-B-32",
                pretrained: Optional[str] = "laion2b_s34b_b79k", *, batch_size: int = 64,
                shard_size: int = DEFAULT_SHARD_SIZE, index_key: Optional[str] = None,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, device: str = "auto", workers: int = 2,
                image_root: Optional[str] = None, image_column: Optional[str] = None,
                caption_column: Optional[str] = None, key_column: Optional[str] = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, recall_target: float = 0.95, progress: bool = True,
                bias_bank: Optional[str] = "generic", clip: Optional[ClipModel] = None) -> dict:
    """Build (or resume) an index folder at ``out``; returns its manifest.

    ``clip`` may pass an already loaded model (then ``model``/``pretrained``/``device`` are ignored).
    ``bias_bank`` ('generic' | 'corpus' | None) computes the ``bias/`` offsets for exact BSAP/NNN search.
    """
    if batch_size <= 0 or shard_size <= 0:
        raise ValueError("batch_size and shard_size must be positive")
    t_start = time.perf_counter()
    reader = open_corpus(corpus, image_root, image_column, caption_column, key_column)
    clip = clip or load_model(model, pretrained, device)
    out = Path(out)
    settings = {"shard_size": shard_size, "index_key": index_key, "memory_budget": memory_budget,
                "max_pixels": max_pixels, "batch_size": batch_size, "workers": workers,
                "recall_target": recall_target, "dim": clip.dim}
    if index_key:
        try:
            validate_key(index_key, clip.dim)
        except ValueError as e:
            raise IndexFolderError(f"--index-key: {e}") from None
    manifest = _check_existing(out, clip, reader, settings)
    if manifest is not None and manifest.get("complete"):
        if bias_bank and "bias" not in manifest:
            from .bias import compute_biases

            manifest["bias"] = compute_biases(out, clip, bank=bias_bank)
        else:
            log.warning("%s is already complete; nothing to do", out)
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    if manifest is None:
        manifest = new_manifest(clip.identity, reader.describe(), dict(settings))
    start_pos = manifest["shards"][-1]["end_pos"] if manifest["shards"] else 0
    resumed = len(manifest["shards"])
    writer = _ShardWriter(out, manifest, reader.metadata_schema, settings, _read_errors(out, start_pos))
    writer.last_end = start_pos
    encoder = Encoder(clip)
    t_model = 0.0
    n_new = n_skipped = 0
    from tqdm import tqdm

    bar = tqdm(desc="embedding", unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               initial=start_pos, mininterval=0.5)
    try:
        for batch in iter_batches(reader, clip.preprocess, clip.tokenizer, batch_size, workers, start_pos, max_pixels):
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
        raise CorpusError(f"no usable items in {corpus}: {counts['skipped']} skipped, see {out / ERRORS}")
    save_manifest(out, manifest)
    if bias_bank:
        from .bias import compute_biases

        manifest["bias"] = compute_biases(out, clip, bank=bias_bank)
    return manifest



def build_from_embeddings(out: str | os.PathLike, image_emb: np.ndarray, text_emb: np.ndarray, model: dict,
                          rows: Optional[list[dict]] = None, *, shard_size: int = DEFAULT_SHARD_SIZE,
                          index_key: Optional[str] = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                          recall_target: float = 0.95, bias_bank: Optional[str] = "corpus", clip=None) -> dict:
    """Write an index folder from precomputed, row-aligned embeddings (e.g. another tool's output).

    ``model`` is the identity the embeddings come from (at least arch, embed_dim, logit_scale);
    ``rows`` are metadata dicts (default: ``{"key": str(i)}``). Returns the manifest.
    """
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
        raise IndexFolderError(f"{out} already holds an index; use another folder")
    model = {"embed_dim": img.shape[1], "logit_scale": 100.0, "context_length": 77, **model}
    settings = {"shard_size": shard_size, "index_key": index_key, "memory_budget": memory_budget,
                "recall_target": recall_target, "dim": img.shape[1], "max_pixels": None}
    manifest = new_manifest(model, {"type": "embeddings", "path": None}, dict(settings))
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.Table.from_pylist(rows[:1]).schema
    writer = _ShardWriter(out, manifest, schema, settings, [])
    writer.last_end = 0
    for start in range(0, len(img), shard_size):
        sl = slice(start, start + shard_size)
        writer.add(np.asarray(img[sl], np.float32), np.asarray(txt[sl], np.float32), rows[sl],
                   list(range(start, min(start + shard_size, len(img)))), [], min(start + shard_size, len(img)))
    writer.finish()
    manifest["complete"] = True
    save_manifest(out, manifest)
    if bias_bank:
        from .bias import compute_biases

        manifest["bias"] = compute_biases(out, clip, bank=bias_bank)
    return manifest
