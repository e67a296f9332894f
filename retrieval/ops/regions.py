"""``retrieval regions``: store ComCLIP's regions of every image (``store.regions``), so that a
``comclip`` query reads each candidate's boxes and box embeddings instead of running selective search
and one forward per box (it still encodes the caption's parts and each predicate's overlay, reading
the image only for that). Shards lacking them (or, with ``redo``, all) get them; one manifest write
publishes them all (a kill leaves the folder as it was; a rerun starts over). The folder records the
setting (``build.regions``), so that a later sync gives its new shards theirs and ``compact`` carries
them. Rows whose image cannot be read are logged and computed at query time."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..corpus.items import no_image_files, row_picture
from ..corpus.regions import MAX_BOXES, given_boxes
from ..embed.regions import image_regions
from ..errors import IndexFolderError
from ..store.generations import next_generation, publish
from ..store.lock import write_lock
from ..store.manifest import require_manifest
from ..store.regions import pack, write_regions


@dataclass
class RegionsReport:
    shards: int
    rows: int
    missing: int
    seconds: float

    def line(self) -> str:
        if not self.shards:
            return "regions: every shard has them"
        miss = f" ({self.missing} unreadable: computed at query time)" if self.missing else ""
        return f"regions: {self.rows} images in {self.shards} shard(s) in {self.seconds:.1f} s{miss}"


def add_regions(folder: str | os.PathLike, clip, max_boxes: Optional[int] = None,
                given: Optional[Mapping[str, Sequence]] = None, image_roots: Sequence[str] = (),
                redo: bool = False, batch: int = 16) -> RegionsReport:
    """Store the regions of ``folder``'s images (see the module docstring). ``given``: boxes by image
    key or path (a dense captioner's), else proposals; ``max_boxes``: default the folder's, else 16."""
    import pyarrow.parquet as pq

    folder, t0 = Path(folder), time.perf_counter()
    with write_lock(folder):
        m = require_manifest(folder)
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is incomplete; finish its build first")
        corpus = m.get("corpus") or {}
        why = no_image_files(corpus)
        if why:
            raise IndexFolderError(f"{folder} has no image files to draw regions on: {why}")
        build = m.setdefault("build", {})
        boxes_n = int(max_boxes or (build.get("regions") or {}).get("max_boxes") or MAX_BOXES)
        if not 1 <= boxes_n <= 64:
            raise ValueError(f"max_boxes must be in [1, 64], got {boxes_n}")
        todo = [s for s in m["shards"] if s["rows"] > 0 and
                (redo or (s.get("regions") or {}).get("max_boxes") != boxes_n)]
        gen, rows, missing = next_generation(m), 0, 0
        for s in todo:
            meta = pq.read_table(folder / s["files"]["metadata"], columns=["key", "image_path"]).to_pylist()
            found = []
            for i in range(0, len(meta), batch):
                chunk = meta[i:i + batch]
                images = [row_picture(corpus, r, image_roots) for r in chunk]
                found += image_regions(clip, images, [given_boxes(given, r) for r in chunk], boxes_n)
            emb, bx = pack(found, s["dim"], boxes_n)
            s["regions"] = write_regions(folder, s["id"], gen, emb, bx)
            rows, missing = rows + s["rows"], missing + s["regions"]["missing"]
        if todo or build.get("regions", {}).get("max_boxes") != boxes_n:
            build["regions"] = {"max_boxes": boxes_n}
            publish(folder, m)
    return RegionsReport(len(todo), rows, missing, time.perf_counter() - t0)
