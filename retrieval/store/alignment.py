"""Whether a folder's files agree with its manifest row for row (cheap: Parquet footers, npy and faiss
headers, the key column's type): what opening an index checks, and what ``retrieval verify`` reports
besides the bytes. A manifest whose row counts were edited, a metadata file of another shard, or a
``key`` column that is not a column of strings (left by an old ``add_embeddings`` given None or int
keys) is named here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from .faiss_index import index_rows
from .files import PARQUET_SHARD_KEY
from .fts import fts_rows
from .layout import EMB_FILE, INDEX_FILE

UNREADABLE = "is unreadable"
REPAIR_KEYS = "run `retrieval compact` to give its rows string keys"


def shard_problems(folder: Path, s: dict, dim: Optional[int] = None, keys: bool = True) -> list[tuple[str, str]]:
    """(file, problem) for each way shard ``s``'s files disagree with its manifest entry (and, with
    ``keys``, a key column that is not strings). A file that cannot be read is one problem,
    ``"is unreadable (...)"``, and ends the shard's check."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    out: list[tuple[str, str]] = []
    rel = s["files"]["metadata"]
    try:
        pf = pq.ParquetFile(folder / rel)
        meta = pf.metadata
        if meta.num_rows != s["rows"]:
            out.append((rel, f"shard {s['id']}: metadata has {meta.num_rows} rows, manifest says {s['rows']}"))
        owner = (meta.metadata or {}).get(PARQUET_SHARD_KEY)
        if owner is not None and json.loads(owner) != [s["id"], s["offset"]]:
            out.append((rel, f"holds the rows of shard {json.loads(owner)[0]}, not shard {s['id']}"))
        key = pf.schema_arrow.field("key").type if "key" in pf.schema_arrow.names else None
        if keys and (key is None or not pa.types.is_string(key)):
            out.append((rel, f"shard {s['id']}: the key column is {key or 'missing'}, not strings; {REPAIR_KEYS}"))
        elif keys and null_keys(folder, s):
            out.append((rel, f"shard {s['id']}: {null_keys(folder, s)} row(s) have a null key; {REPAIR_KEYS}"))
        if keys and s.get("fts"):
            rel = s["fts"]["dir"]
            n = fts_rows(folder / rel)
            if n != s["rows"]:
                out.append((rel, f"shard {s['id']}: the full-text index covers {n} rows, manifest says {s['rows']}"))
        for mod in s.get("index") or {}:
            if EMB_FILE[mod] in s["files"]:
                rel = s["files"][EMB_FILE[mod]]
                shape = np.load(folder / rel, mmap_mode="r").shape
                if shape[0] != s["rows"]:
                    out.append((rel, f"shard {s['id']}: {shape[0]} rows, manifest says {s['rows']}"))
                if dim is not None and (len(shape) != 2 or shape[1] != dim):
                    out.append((rel, f"shard {s['id']}: shape {shape}, the index has dim {dim}"))
            if INDEX_FILE[mod] in s["files"]:
                rel = s["files"][INDEX_FILE[mod]]
                n = index_rows(folder / rel)
                if n != s["rows"]:
                    out.append((rel, f"shard {s['id']}: {mod} index holds {n} vectors, manifest says {s['rows']}"))
    except Exception as e:  # noqa: BLE001 - numpy, faiss and pyarrow each raise their own kinds
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        out.append((rel, f"{UNREADABLE} ({type(e).__name__}: {msg})"))
    return out


def bad_keys(folder: Path, s: dict) -> bool:
    """Whether shard ``s``'s key column is not a column of non-null strings (compact repairs it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(Path(folder) / s["files"]["metadata"])
    if "key" not in schema.names or not pa.types.is_string(schema.field("key").type):
        return True
    return null_keys(folder, s) > 0


def null_keys(folder: Path, s: dict) -> int:
    """Rows of shard ``s`` whose key is null (reads the key column)."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(folder) / s["files"]["metadata"], columns=["key"]).column("key").null_count


def manifest_problems(manifest: dict) -> list[str]:
    """Ways the manifest disagrees with itself: shard ranges overlapping, counts that do not add up."""
    out = []
    shards = sorted((s for s in manifest.get("shards", []) if s["rows"] > 0), key=lambda s: s["offset"])
    for a, b in zip(shards, shards[1:]):
        if a["offset"] + a["rows"] > b["offset"]:
            out.append(f"shards {a['id']} and {b['id']} overlap (ids {b['offset']}..{a['offset'] + a['rows'] - 1})")
    rows = sum(s["rows"] for s in manifest.get("shards", []))
    counts = manifest.get("counts") or {}
    if "rows" in counts and counts["rows"] != rows:
        out.append(f"counts.rows is {counts['rows']}, the shards hold {rows}")
    for sid, t in (manifest.get("tombstones") or {}).items():
        shard = next((s for s in manifest.get("shards", []) if str(s["id"]) == sid), None)
        if shard is None or not 0 <= t.get("count", 0) <= shard["rows"]:
            out.append(f"tombstones of shard {sid} do not match a shard of the manifest")
    if shards and manifest.get("next_id", 0) < shards[-1]["offset"] + shards[-1]["rows"]:
        out.append(f"next_id {manifest.get('next_id')} is inside shard {shards[-1]['id']}")
    return out
