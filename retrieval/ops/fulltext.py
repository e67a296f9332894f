"""Full-text files for a folder built before keyword search (``retrieval migrate`` runs this): each
shard's ``fts/fts_{k}.sqlite`` written from its stored metadata, all published by one manifest write
(a kill leaves the folder as it was; a rerun starts over). Later shards (syncs, appends, compaction)
get theirs as they are written, since the folder's build settings now say so."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import IndexFolderError
from ..store.fts import row_texts
from ..store.generations import publish
from ..store.lock import write_lock
from ..store.manifest import require_manifest
from ..store.shard import fulltext_entry


@dataclass
class FulltextReport:
    shards: int
    rows: int
    seconds: float

    def line(self) -> str:
        if not self.shards:
            return "full-text files: every shard has one"
        return f"full-text files: {self.shards} shard(s), {self.rows} rows indexed for keyword search in {self.seconds:.1f} s"


def add_fulltext(folder: str | os.PathLike, text_columns: Optional[Sequence[str]] = None) -> FulltextReport:
    """Give every shard of ``folder`` lacking one its full-text file (``text_columns``: the metadata
    columns read besides the captions; default the folder's, else the captions only)."""
    import pyarrow.parquet as pq

    folder, t0 = Path(folder), time.perf_counter()
    with write_lock(folder):
        m = require_manifest(folder)
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is incomplete; finish its build first")
        build = m.setdefault("build", {})
        columns = list(text_columns or build.get("text_columns") or ["caption"])
        todo = [s for s in m["shards"] if s["rows"] > 0 and not s.get("fts")]
        rows = 0
        for s in todo:
            s["fts"] = fulltext_entry(folder, s["id"], row_texts(pq.read_table(folder / s["files"]["metadata"]), columns))
            rows += s["rows"]
        if todo or not build.get("fts"):
            build["fts"], build["text_columns"] = True, columns
            publish(folder, m)
    return FulltextReport(len(todo), rows, time.perf_counter() - t0)
