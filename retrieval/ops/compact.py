"""``compact``: reclaim the space of deleted rows and merge small shards (like Qdrant's vacuum).

Shards whose deleted fraction exceeds ``threshold`` (default 0.2), and shards with fewer live rows
than ``min_rows`` when there are at least two of them (appends leave small shards), are rewritten
into new shards of up to the build's shard size from what is stored: embeddings, metadata, caption
masks, per-item bias offsets and stored ComCLIP regions are copied (nothing is re-embedded or
recomputed; regions only when every rewritten shard has them, else ``retrieval regions`` fills them); the faiss indexes
are built anew, added to the folder's trained quantizer when it has one. One manifest write retires
the old shards. The rewritten items get new global ids (the ids of every other item stay); keys
never change. Shards whose key column is not strings (an old ``add_embeddings`` took None or int
keys) are always rewritten: int keys become their text, a null key ``id-<old global id>``, each
logged in errors.jsonl as repaired. A merged folder (``ops.merge``) is merged again in the same
publish, over the new shards and any appended since the merge.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.generations import next_generation, publish
from ..store.layout import MODALITIES, bias_path
from ..store.lock import write_lock
from ..store.manifest import require_manifest
from ..store.masks import caption_mask, deleted_mask
from ..store.regions import read_arrays, write_regions
from ..store.shard import write_shard
from ..store.vectors import read_all
from ..store.alignment import bad_keys
from ..store.writer import next_ids, read_errors, update_counts, write_errors
from .bias import METHODS, save_shard_offsets
from .merge import MergeReport, merge_again, merge_behind


@dataclass
class CompactReport:
    shards_before: int
    shards_after: int
    rewritten_shards: int
    rows_reclaimed: int
    ids_changed: int
    seconds: float
    merged: str = ""   # a merged index merged again over the rewritten shards (``ops.merge.merge_again``)

    def line(self) -> str:
        return (f"rewrote {self.rewritten_shards} shard(s): {self.rows_reclaimed} deleted rows reclaimed, "
                f"{self.ids_changed} items got new ids (keys unchanged); {self.shards_before} -> "
                f"{self.shards_after} shards in {self.seconds:.1f} s"
                + (f"; merged again: {self.merged}" if self.merged else ""))


def _live_rows(folder: Path, manifest: dict, shard: dict) -> np.ndarray:
    dead = deleted_mask(folder, manifest, shard)
    return np.arange(shard["rows"]) if dead is None else np.flatnonzero(~dead)


def pick_shards(folder: Path, manifest: dict, threshold: float, min_rows: int) -> list[dict]:
    """The shards compaction rewrites (pure in the manifest and its masks)."""
    shards = [s for s in manifest["shards"] if s["rows"] > 0]
    dead = {s["id"]: (manifest.get("tombstones") or {}).get(str(s["id"]), {}).get("count", 0) for s in shards}
    heavy = [s for s in shards if dead[s["id"]] > threshold * s["rows"]]
    small = [s for s in shards if s["rows"] - dead[s["id"]] < min_rows and s not in heavy]
    return sorted(heavy + (small if len(small) + len(heavy) >= 2 else []), key=lambda s: s["offset"])


def string_keys(table, ids: np.ndarray, errors: list[dict]):
    """``table`` with a ``key`` column of non-null strings: int keys become their text, a null key
    ``id-<global id>`` (logged as repaired: the row stays findable and deletable)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column("key") if "key" in table.column_names else pa.nulls(len(table), pa.string())
    if pa.types.is_string(col.type) and col.null_count == 0:
        return table
    keys = pc.cast(col, pa.string()).to_pylist() if not pa.types.is_null(col.type) else [None] * len(table)
    for i, k in enumerate(keys):
        if k is None:
            keys[i] = f"id-{int(ids[i])}"
            errors.append({"pos": -1, "key": keys[i], "stage": "key", "action": "repaired",
                           "reason": "the row had a null key; compact gave it one from its old id"})
    arr = pa.array(keys, pa.string())
    if "key" in table.column_names:
        return table.set_column(table.column_names.index("key"), "key", arr)
    return table.add_column(0, "key", arr)


def compact(folder: str | os.PathLike, threshold: float = 0.2, min_rows: Optional[int] = None) -> CompactReport:
    """Compact ``folder`` (see the module docstring); returns what it did."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    folder, t0 = Path(folder), time.perf_counter()
    with write_lock(folder):
        m = require_manifest(folder)
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is incomplete; finish its build before compacting")
        settings = dict(m["build"])
        size = int(settings["shard_size"])
        before = sum(1 for s in m["shards"] if s["rows"])
        chosen = pick_shards(folder, m, threshold, min_rows if min_rows is not None else max(1, size // 4))
        broken = [s for s in m["shards"] if s["rows"] and s not in chosen and bad_keys(folder, s)]
        chosen = sorted(chosen + broken, key=lambda s: s["offset"])
        errors = read_errors(folder)
        if not chosen:   # nothing to rewrite; shards appended beside a merged index are merged in
            again = merge_again(folder, m) if any(merge_behind(m, mod) for mod in MODALITIES) else MergeReport()
            if again.merged:
                publish(folder, m)
            return CompactReport(before, before, 0, 0, 0, time.perf_counter() - t0, again.line() if again.merged else "")
        parts = {"img": [], "txt": [], "cap": [], "meta": [], "reg_emb": [], "reg_boxes": [], **{(mt, mod): [] for mt in METHODS for mod in MODALITIES}}
        bias = m.get("bias") if (m.get("bias") or {}).get("dir") else None  # a pre-generation bias: recompute
        if m.get("bias") and bias is None:
            m["bias"]["stale"] = True
        boxes_n = {(s.get("regions") or {}).get("max_boxes") for s in chosen}
        carry = len(boxes_n) == 1 and None not in boxes_n   # every rewritten row has stored regions: copy them
        for s in chosen:
            live = _live_rows(folder, m, s)
            if carry:
                emb, bx = read_arrays(folder, s["regions"])
                parts["reg_emb"].append(np.asarray(emb[live]))
                parts["reg_boxes"].append(np.asarray(bx[live]))
            parts["img"].append(np.asarray(read_all(folder, s, "image")[live]))
            parts["txt"].append(np.asarray(read_all(folder, s, "text")[live]) if "text" in s["index"]
                                else np.zeros((len(live), s["dim"]), np.float16))
            cap = caption_mask(folder, s)
            parts["cap"].append(np.ones(len(live), bool) if cap is None else cap[live])
            parts["meta"].append(string_keys(pq.read_table(folder / s["files"]["metadata"]).take(pa.array(live)),
                                             s["offset"] + live, errors))
            if bias:
                for mt in METHODS:
                    for mod in MODALITIES:
                        path = bias_path(folder, mt, mod, s["id"], bias["dir"])
                        parts[(mt, mod)].append(np.load(path)[live] if path.exists() else np.zeros(len(live), np.float32))
        joined = {k: (pa.concat_tables(v, promote_options="permissive") if k == "meta" else np.concatenate(v))
                  for k, v in parts.items() if v}
        schema = joined["meta"].schema.remove_metadata()
        chosen_ids = {s["id"] for s in chosen}
        m["shards"] = [s for s in m["shards"] if s["id"] not in chosen_ids]
        for sid in chosen_ids:
            (m.get("tombstones") or {}).pop(str(sid), None)
        n = len(joined["img"])
        for start in range(0, n, size):
            sl = slice(start, min(start + size, n))
            k, offset = next_ids(m)
            offsets = ({mod: {mt: joined[(mt, mod)][sl] for mt in METHODS} for mod in MODALITIES} if bias else None)
            entry = write_shard(folder, m, k, offset, joined["img"][sl], joined["txt"][sl],
                                joined["meta"].slice(start, sl.stop - start), joined["cap"][sl], schema, settings, offsets)
            entry["end_pos"] = None
            if carry:
                entry["regions"] = write_regions(folder, k, next_generation(m), joined["reg_emb"][sl], joined["reg_boxes"][sl])
            m["shards"].append(entry)
            m["next_shard"], m["next_id"] = k + 1, offset + entry["rows"]
            if bias:
                save_shard_offsets(folder, m, entry, {mod: offsets[mod] for mod in entry["index"]})
        if bias:  # the rewritten shards' offset files are no longer current
            gone = {bias_path(folder, mt, mod, s["id"], bias["dir"]).relative_to(folder).as_posix()
                    for s in chosen for mt in METHODS for mod in MODALITIES}
            bias["files"] = {rel: rec for rel, rec in bias["files"].items() if rel not in gone}
        write_errors(folder, errors)
        update_counts(m, errors)
        again = merge_again(folder, m)   # a merged folder stays merged (ops.merge), in the same publish
        publish(folder, m)
        after = sum(1 for s in m["shards"] if s["rows"])
        return CompactReport(before, after, len(chosen), sum(s["rows"] for s in chosen) - n, n,
                             time.perf_counter() - t0, again.line() if again.merged or again.skipped else "")
