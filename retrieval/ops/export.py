"""``retrieval export``: the live rows of an index folder in clip-retrieval's embeddings layout.

Format 3 keeps an IVF/HNSW shard's vectors only in its index codes; tools that read the embedding
folder directly (embedding-reader, autofaiss, clip-retrieval's back) get the plain layout on demand:

```
OUT/img_emb/img_emb_{k}.npy      fp16 [rows, d], L2-normalised
OUT/text_emb/text_emb_{k}.npy    fp16 [rows, d] (zero rows for items without a caption)
OUT/metadata/metadata_{k}.parquet  row-aligned metadata
```
Deleted rows are left out; ``k`` counts the non-empty output shards from 0. Every file is written
atomically and the folder's writer lock is held, so the files read stay put.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import IndexFolderError
from ..store.files import save_npy, save_parquet
from ..store.layout import EMB_FILE, MODALITIES, shard_files
from ..store.lock import write_lock
from ..store.manifest import require_manifest
from ..store.masks import deleted_mask
from ..store.vectors import read_all


@dataclass
class ExportReport:
    shards: int
    rows: int
    bytes: int
    seconds: float

    def line(self) -> str:
        return (f"exported {self.rows} rows in {self.shards} shard(s), {self.bytes / 2**20:.1f} MiB "
                f"in {self.seconds:.1f} s")


def export_embeddings(folder: str | os.PathLike, out: str | os.PathLike,
                      modalities: Sequence[str] = MODALITIES) -> ExportReport:
    """Write ``folder``'s live rows to ``out`` (a new or empty folder) in clip-retrieval's layout."""
    import pyarrow.parquet as pq

    folder, out = Path(folder), Path(out)
    bad = set(modalities) - set(MODALITIES)
    if bad or not modalities:
        raise ValueError(f"modalities must be among {', '.join(MODALITIES)}, got {', '.join(modalities) or 'none'}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise IndexFolderError(f"{out} exists and is not an empty folder", usage=True)
    t0 = time.perf_counter()
    k = rows = size = 0
    with write_lock(folder):
        m = require_manifest(folder)
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is not a complete index folder")
        d = int(m["model"]["embed_dim"])
        for s in m["shards"]:
            dead = deleted_mask(folder, m, s)
            live = np.flatnonzero(~dead) if dead is not None else np.arange(s["rows"])
            if len(live) == 0:
                continue
            names = shard_files(k)
            for mod in modalities:
                vec = read_all(folder, s, mod)[live] if mod in s["index"] else np.zeros((len(live), d), np.float16)
                save_npy(out / names[EMB_FILE[mod]], np.asarray(vec, np.float16))
                size += (out / names[EMB_FILE[mod]]).stat().st_size
            table = pq.read_table(folder / s["files"]["metadata"]).take(live)
            save_parquet(out / names["metadata"], table, table.schema.remove_metadata())
            size += (out / names["metadata"]).stat().st_size
            k, rows = k + 1, rows + len(live)
    return ExportReport(k, rows, size, time.perf_counter() - t0)
