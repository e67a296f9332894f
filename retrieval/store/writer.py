"""Commit shards: buffer embedded rows, write each full shard (``shard.write_shard``), and publish it.

Each commit is one published generation that is complete on its own: the new shard, the tombstones
of the rows its items replace (a changed item's old version), the log of skipped items, and the bias
offsets of the new rows (an ``Extension``: computed before the shard's combined indexes are built,
since they are its extra coordinates, and saved with it) go out in one manifest write. A reader
never sees an item twice or a shard without its offsets; a killed writer leaves the previous state.
Shard ids and global ids come from counters in the manifest and are never reused.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from .atomic import write_bytes
from .cast import cast
from .checks import check_unit_rows
from .generations import next_generation, publish
from .layout import ERRORS, MODALITIES
from .masks import apply_tombstones, live_count
from .rows import column_keys
from .shard import shard_modalities, write_shard, zero_text_rows

log = logging.getLogger("retrieval.build")


class Extension(Protocol):
    """What a build entry point adds to each commit (the bias offsets of the new rows) and to the
    run's last publish (the banks and offsets of a folder that has none yet)."""

    def offsets(self, manifest: dict, vectors: dict) -> Optional[dict]:
        """{modality: {method: [n]}} for ``vectors`` {modality: [n, d]}, or None (no banks yet)."""

    def save(self, manifest: dict, entry: dict, offsets: dict) -> None:
        """Write the shard's offsets files and list them in ``manifest``."""

    def defers(self, manifest: dict) -> bool:
        """Whether the run will compute banks before the folder is first complete: shards committed
        until then defer their indexes (trained once across them, then built)."""

    def announce(self, manifest: dict) -> None:
        """Record in ``manifest`` (about to be published searchable) the offsets ``finish`` or a later
        run will add, so that readers can say they are pending."""

    def finish(self, manifest: dict) -> bool:
        """Called after the publish that marks ``manifest`` complete: computes the banks and offsets
        and rewrites the indexes' offsets coordinates (``store.offsets.index_with_offsets``); returns
        whether it changed ``manifest`` (the caller then publishes it)."""


Extend = Extension


def read_errors(out: Path) -> list[dict]:
    """The folder's log of skipped and repaired items. A line that is not such a record (a hand edit,
    a torn copy) is left out with a warning, never a crash; the next write of the log drops it."""
    path = out / ERRORS
    if not path.exists():
        return []
    out_lines, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError:
            e = None
        if isinstance(e, dict) and {"key", "stage", "action"} <= e.keys():
            out_lines.append({"pos": -1, **e})
        else:
            bad += 1
    if bad:
        log.warning("%s: %d line(s) are not error records; left out", path, bad)
    return out_lines


def write_errors(out: Path, errors: list[dict]) -> None:
    write_bytes(out / ERRORS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors).encode())


def next_ids(manifest: dict) -> tuple[int, int]:
    """(next shard id, next global id) of a folder (counted from its shards when the counters are absent)."""
    shards = manifest["shards"]
    k = manifest.get("next_shard", max((s["id"] for s in shards), default=-1) + 1)
    i = manifest.get("next_id", max((s["offset"] + s["rows"] for s in shards), default=0))
    return k, i


def update_counts(manifest: dict, errors: list[dict], inputs: Optional[int] = None) -> None:
    by_action = Counter(e["action"] for e in errors)
    old = manifest.get("counts") or {}
    rows = sum(s["rows"] for s in manifest["shards"])
    live = live_count(manifest)
    manifest["counts"] = {
        "rows": rows, "live": live, "deleted": rows - live,
        "captionless": sum(s.get("captionless", 0) for s in manifest["shards"]),
        "inputs": old.get("inputs", 0) if inputs is None else inputs,
        "skipped": by_action.get("skipped", 0),
        "repaired": len({e["key"] for e in errors if e["action"] == "repaired"}),
        "skipped_by_stage": dict(Counter(e["stage"] for e in errors if e["action"] == "skipped")),
    }


class ShardWriter:
    """Accumulates rows and commits full shards (files first, the manifest last)."""

    def __init__(self, out: Path, manifest: dict, schema, settings: dict, errors: list[dict],
                 replaced: Optional[dict] = None, extend: Optional[Extend] = None):
        self.out, self.manifest, self.schema, self.s = out, manifest, schema, settings
        self.errors = errors  # the log as published (what earlier commits and runs wrote)
        self.pending_errors: list[dict] = []
        self.replaced = replaced or {}  # key -> global id its new row replaces
        self.extend = extend
        self.img: list[np.ndarray] = []
        self.txt: list[np.ndarray] = []
        self.has_caption: list[bool] = []
        self.tables: list = []  # pyarrow Tables of the buffered rows, in the writer's schema
        self.positions: list[np.ndarray] = []  # each buffered row's input position
        self.last_end = 0
        self.committed = 0  # shards committed by this writer

    @property
    def n(self) -> int:
        return sum(len(p) for p in self.positions)

    def add(self, img: np.ndarray, txt: np.ndarray, rows, has_caption: list[bool], errors: list[dict],
            end_pos: int, checked: bool = False, positions: Optional[np.ndarray] = None) -> None:
        """Rows (image embeddings [n, d], text embeddings of the captioned rows only) of one batch.
        ``rows``: a pyarrow Table in the writer's schema with ``positions`` (each row's input
        position), or metadata dicts carrying theirs as ``_pos``; ``checked``: the caller already
        checked the vectors (``store.checks``)."""
        import pyarrow as pa

        if not checked:
            check_unit_rows(img, "image embeddings", first=self.n)
            if txt is not None:
                check_unit_rows(txt, "text embeddings")
        if not isinstance(rows, pa.Table):
            positions = np.fromiter((r["_pos"] for r in rows), np.int64, len(rows))
            rows = pa.Table.from_pylist(rows, schema=self.schema)
        elif not rows.schema.equals(self.schema):
            rows = rows.cast(self.schema)
        positions = np.asarray(positions, np.int64)
        n = rows.num_rows
        self.pending_errors.extend(errors)
        txt_all = zero_text_rows(txt, np.asarray(has_caption, bool), n, img.shape[1])
        start = 0
        while start < n:
            take = min(self.s["shard_size"] - self.n, n - start)
            self.img.append(cast(img[start:start + take], np.float16))  # buffer what is written
            self.txt.append(txt_all[start:start + take])
            self.has_caption.extend(has_caption[start:start + take])
            self.tables.append(rows.slice(start, take))
            self.positions.append(positions[start:start + take])
            start += take
            if self.n == self.s["shard_size"]:
                self.commit(int(self.positions[-1][-1]) + 1)
        self.last_end = end_pos

    def commit(self, end_pos: int) -> None:
        import pyarrow as pa

        m = self.manifest
        k, offset = next_ids(m)
        rows = self.tables[0] if len(self.tables) == 1 else pa.concat_tables(self.tables)
        img, txt = (parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in (self.img, self.txt))
        has_caption = np.asarray(self.has_caption, bool)
        vectors = {mod: v for mod, v in zip(MODALITIES, (img, txt)) if mod in shard_modalities(self.s, has_caption)}
        offsets = None if self.extend is None else self.extend.offsets(m, vectors)
        defer = offsets is None and self.extend is not None and self.extend.defers(m)
        entry = write_shard(self.out, m, k, offset, img, txt, rows, has_caption, self.schema, self.s, offsets, defer)
        entry["end_pos"] = end_pos
        gen = next_generation(m)
        gone = [self.replaced.pop(key) for key in column_keys(rows) if key in self.replaced] if self.replaced else []
        apply_tombstones(self.out, m, gone, gen)
        m["shards"].append(entry)
        m["next_shard"], m["next_id"] = k + 1, offset + entry["rows"]
        if offsets is not None:
            self.extend.save(m, entry, offsets)
        self._log(end_pos)
        publish(self.out, m)
        self.committed += 1
        self.img, self.txt, self.has_caption, self.tables, self.positions = [], [], [], [], []

    def _log(self, end_pos: Optional[int] = None) -> None:
        """Move the pending log lines up to ``end_pos`` (all when None) into the published log."""
        done = [e for e in self.pending_errors if end_pos is None or e["pos"] < end_pos]
        self.pending_errors = [e for e in self.pending_errors if end_pos is not None and e["pos"] >= end_pos]
        self.errors.extend(done)
        write_errors(self.out, self.errors)
        update_counts(self.manifest, self.errors)

    def finish(self) -> None:
        """Commit the last partial shard; trailing skipped items are logged without an empty shard."""
        if self.n:
            self.commit(self.last_end)
        self._log()
