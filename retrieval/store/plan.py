"""What a build run has to do, by key: the corpus listing against what the folder already indexes.

Every run of ``retrieval build`` (the first, a resume after a kill, a sync after the corpus changed)
is planned the same way, so a resume stays correct whatever happened to the corpus in between:
- a key not indexed (or indexed but deleted) is **added**;
- a key indexed with another source fingerprint (its files or row changed) is **changed**: the new
  version is embedded and the old row tombstoned in the same manifest write;
- an indexed key no longer in the corpus is **deleted** (tombstoned);
- a key skipped before with the same fingerprint (a corrupt image) is not retried; its log line stays;
- a key the user deleted (held, ``store.held``) is not added back until it is restored.
Rows indexed before fingerprints existed (no ``_source``) count as unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..corpus import CorpusReader
from .held import held_keys
from .masks import deleted_mask

SOURCE = "_source"  # the metadata column holding each row's source fingerprint


@dataclass
class Plan:
    todo: Optional[np.ndarray]               # input positions to embed, sorted (None: all, a fresh build)
    replaced: dict = field(default_factory=dict)    # key -> global id of the row its new version replaces
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids whose key left
    kept: list = field(default_factory=list)        # log lines that stay: items skipped again (not retried)
                                                    # and repairs of rows that stay indexed
    inputs: int = 0
    unchanged: int = 0
    held: int = 0                                   # corpus items left out: their keys were deleted by the user

    @property
    def added(self) -> int:
        return 0 if self.todo is None else len(self.todo) - len(self.replaced)


def indexed_keys(folder: str | os.PathLike, manifest: dict) -> dict[str, tuple[int, Optional[str]]]:
    """{key: (global id, source fingerprint)} of the live rows."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    out: dict[str, tuple[int, Optional[str]]] = {}
    for s in manifest["shards"]:
        if s["rows"] == 0:
            continue
        pf = pq.ParquetFile(folder / s["files"]["metadata"])
        cols = ["key"] + ([SOURCE] if SOURCE in pf.schema_arrow.names else [])
        table = pf.read(columns=cols)
        keys = table.column("key").to_pylist()
        sources = table.column(SOURCE).to_pylist() if SOURCE in cols else [None] * len(keys)
        dead = deleted_mask(folder, manifest, s)
        for r, (k, src) in enumerate(zip(keys, sources)):
            if dead is None or not dead[r]:
                out[k] = (s["offset"] + r, src)
    return out


def plan_run(reader: CorpusReader, folder: str | os.PathLike, manifest: Optional[dict],
             old_errors: list[dict]) -> Plan:
    """The plan of one run over ``reader`` into ``folder`` (``manifest``: its current state or None)."""
    if manifest is None or not manifest["shards"]:
        return Plan(None)
    indexed = indexed_keys(folder, manifest)
    held = held_keys(folder, manifest)
    skipped_before = {e["key"]: e for e in old_errors if e.get("action") == "skipped" and e.get("source")}
    repaired_before: dict[str, list] = {}
    for e in old_errors:
        if e.get("action") == "repaired":
            repaired_before.setdefault(e["key"], []).append(e)
    todo, replaced, kept, seen = [], {}, [], set()
    n = unchanged = n_held = 0
    for e in reader.entries(lambda pos: False, sources=True):
        n += 1
        if e.error is not None and e.key in seen:  # a duplicate key: its first occurrence decides
            continue
        seen.add(e.key)
        if e.key in held:
            n_held += 1
            continue
        have = indexed.get(e.key)
        if have is not None and (have[1] is None or have[1] == e.source):
            unchanged += 1
            kept.extend({**r, "pos": e.pos} for r in repaired_before.get(e.key, ()))
            continue
        before = skipped_before.get(e.key)
        if have is None and before is not None and before["source"] == e.source:
            kept.append({**before, "pos": e.pos})
            continue
        if have is not None:
            replaced[e.key] = have[0]
        todo.append(e.pos)
    deleted = np.array(sorted(i for k, (i, _) in indexed.items() if k not in seen), np.int64)
    return Plan(np.array(todo, np.int64), replaced, deleted, kept, n, unchanged, n_held)
