"""Write shards: npy + Parquet + one faiss index per modality, then the manifest (each file atomic).

A shard's files are all written before the manifest names it, so a killed writer leaves the previous
state (the manifest is the commit point). ``errors.jsonl`` holds the skipped/repaired inputs up to
the last committed input position.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_path, write_bytes, write_failure
from .faiss_index import build_faiss_index, tune_params
from .integrity import file_record
from .keys import shard_key
from .layout import ERRORS, METADATA_ROW_GROUP, shard_files
from .manifest import save_manifest

log = logging.getLogger("retrieval.build")


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


PARQUET_SHARD_KEY = b"retrieval.shard"  # key-value metadata: which shard (id, first global id) a file holds


def save_parquet(path: Path, rows: list[dict], schema, shard: Optional[tuple[int, int]] = None) -> None:
    """Row-aligned metadata in small row groups; ``shard`` = (id, offset) is stored in the file's
    key-value metadata, so a metadata file swapped for another shard's is named on open."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if shard is not None:
        schema = schema.with_metadata({**(schema.metadata or {}), PARQUET_SHARD_KEY: json.dumps(list(shard)).encode()})
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=METADATA_ROW_GROUP)


def save_faiss(path: Path, index) -> None:
    import faiss

    with atomic_path(path) as tmp:
        try:
            faiss.write_index(index, tmp)
        except RuntimeError:  # the index is in memory and valid: only the write can have failed
            raise write_failure(path, "faiss could not write the file (the disk may be full)") from None


def read_errors(out: Path, before_pos: int) -> list[dict]:
    path = out / ERRORS
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("pos", 0) < before_pos]


def write_errors(out: Path, errors: list[dict]) -> None:
    write_bytes(out / ERRORS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors).encode())


class ShardWriter:
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
        save_npy(self.out / files["img_emb"], img)
        save_npy(self.out / files["text_emb"], txt)
        save_parquet(self.out / files["metadata"], self.rows, self.schema, (k, entry["offset"]))
        for modality, vecs in (("image", img), ("text", txt)):
            if n == 0:
                continue
            key = shard_key(n, vecs.shape[1], self.s["memory_budget"], self.s["index_key"])
            if self.s["index_key"] and key != self.s["index_key"]:
                log.warning("shard %d has %d rows, too few to train %s; using %s", k, n, self.s["index_key"], key)
            t0 = time.perf_counter()
            index = build_faiss_index(vecs, key, seed=k)
            params = tune_params(index, vecs, key, recall=self.s["recall_target"], seed=k)
            save_faiss(self.out / files[f"{modality}_index"], index)
            entry["index"][modality] = {"key": key, "params": params, "ntotal": int(index.ntotal),
                                        "build_s": round(time.perf_counter() - t0, 3)}
        records = {name: file_record(self.out / rel) for name, rel in files.items()
                   if n > 0 or not name.endswith("_index")}
        for field in ("sha256", "bytes", "sample"):
            entry[field] = {name: r[field] for name, r in records.items()}
        done = [e for e in self.pending_errors if e["pos"] < end_pos]
        self.pending_errors = [e for e in self.pending_errors if e["pos"] >= end_pos]
        self.errors.extend(done)
        write_errors(self.out, self.errors)
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
        write_errors(self.out, self.errors)
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
