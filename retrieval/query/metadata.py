"""The metadata join: Parquet rows of global ids, read by row group (never whole shards), LRU-cached."""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .shards import ShardSet

META_CACHE = 256  # Parquet row groups kept in memory (4096 rows each for indexes built by this version)


class MetadataReader:
    def __init__(self, shards: ShardSet, cache: int = META_CACHE):
        self.shards, self.cache = shards, cache
        self._files: dict[int, tuple] = {}          # shard position -> (ParquetFile, row-group starts)
        self.groups: OrderedDict = OrderedDict()    # (shard position, row group) -> pyarrow Table
        self._lock = threading.Lock()               # the cache and pyarrow's ParquetFile are shared across threads

    def rows(self, ids) -> list[dict]:
        """Metadata rows ``{"id": global id, **columns}`` for ``ids``, in order (IndexError if unknown)."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        sh, local = self.shards.locate(flat)
        out: list = [None] * len(flat)
        for k in np.unique(sh):
            starts = self._group_starts(int(k))
            sel = np.flatnonzero(sh == k)
            groups = np.searchsorted(starts, local[sel], side="right") - 1
            for g in np.unique(groups):
                pos = sel[groups == g]
                table = self._group(int(k), int(g))
                for p, row in zip(pos, table.take(local[pos] - starts[g]).to_pylist()):
                    out[p] = {"id": int(flat[p]), **row}
        return out

    def _group_starts(self, shard: int) -> np.ndarray:
        import pyarrow.parquet as pq

        with self._lock:
            if shard not in self._files:
                pf = pq.ParquetFile(self.shards.path(self.shards.shards[shard], "metadata"))
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
                self._files[shard] = (pf, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
            return self._files[shard][1]

    def _group(self, shard: int, group: int):
        key = (shard, group)
        with self._lock:
            if key in self.groups:
                self.groups.move_to_end(key)
                return self.groups[key]
            while len(self.groups) >= self.cache:
                self.groups.popitem(last=False)
            self.groups[key] = self._files[shard][0].read_row_group(group)
            return self.groups[key]
