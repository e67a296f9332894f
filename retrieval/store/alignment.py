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
        why = key_problem(folder, s, pf.schema_arrow) if keys else None
        if why:
            out.append((rel, f"shard {s['id']}: {why}; {REPAIR_KEYS}"))
        if keys and s.get("fts"):
            rel = s["fts"]["dir"]
            n = fts_rows(folder / rel)
            if n != s["rows"] and not (n == 0 and s["fts"].get("docs") == 0):   # a shard without text: none
                out.append((rel, f"shard {s['id']}: the full-text index covers {n} rows, manifest says {s['rows']}"))
        for rel in ((s.get("regions") or {}).get("files") or {}) if keys else ():
            n = np.load(folder / rel, mmap_mode="r").shape[0]
            if n != s["rows"]:
                out.append((rel, f"shard {s['id']}: regions for {n} rows, manifest says {s['rows']}"))
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


def key_problem(folder: Path, s: dict, schema=None) -> Optional[str]:
    """What is wrong with shard ``s``'s key column (not strings, or null keys), or None; ``schema``:
    its metadata file's, when already read (the column itself is read only when its type is right)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(folder) / s["files"]["metadata"]
    schema = schema if schema is not None else pq.read_schema(path)
    key = schema.field("key").type if "key" in schema.names else None
    if key is None or not pa.types.is_string(key):
        return f"the key column is {key or 'missing'}, not strings"
    nulls = pq.read_table(path, columns=["key"]).column("key").null_count
    return f"{nulls} row(s) have a null key" if nulls else None


def bad_keys(folder: Path, s: dict) -> bool:
    """Whether shard ``s``'s key column is not a column of non-null strings (compact repairs it)."""
    return key_problem(folder, s) is not None


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
