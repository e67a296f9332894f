"""One consistent view of an index folder: a manifest and everything opened from it.

An :class:`~retrieval.query.index.Index` holds one snapshot and swaps it for a new one in a single
assignment when the folder changes (``Index.refresh``), so a search started on the old snapshot
finishes on it and no search ever sees half an update. A new snapshot reuses what did not change:
the loaded indexes of shards still present, and the biases, searcher, metadata reader and filter
table when the shards and bias files are the same (a delete changes only the row masks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..store.warm import warm_in_background
from .biases import Biases
from .engine import ModalitySearch
from .filters import Filters
from .keyword import KeywordIndex
from .metadata import MetadataReader
from .searcher import Searcher
from .selection import RowMasks, Selection
from .shards import ShardSet


def _shard_ids(manifest: dict) -> tuple:
    """What a shard set is opened from: the shards, and the merged indexes over them."""
    return tuple(s["id"] for s in manifest["shards"] if s["rows"] > 0) + (str(manifest.get("merged")),)


def _bias_files(manifest: dict) -> tuple:
    b = manifest.get("bias") or {}
    return (b.get("dir"), tuple(sorted(b.get("files") or ())), b.get("tau"), str(b.get("shift")))


def only_shards(manifest: dict, keep: Optional[Callable[[dict], bool]]) -> dict:
    """``manifest`` with only the shards ``keep`` accepts (all when None); global ids unchanged."""
    return manifest if keep is None else {**manifest, "shards": [s for s in manifest["shards"] if keep(s)],
                                          "shard_filter": True}


class Snapshot:
    def __init__(self, folder: Path, manifest: dict, backend: str, mmap: Optional[bool] = None,
                 search_params: Optional[str] = None, previous: Optional["Snapshot"] = None, engines=None,
                 warm: bool = False):
        """``engines``: the searcher's engine factory (``query.searcher.Searcher``); ``warm``: connect
        the ``where`` filters in the background now (``Filters.warm``) and read the search files into
        the page cache (``store.warm``)."""
        self.folder, self.manifest = Path(folder), manifest
        same_shards = previous is not None and _shard_ids(previous.manifest) == _shard_ids(manifest)
        same_bias = same_shards and _bias_files(previous.manifest) == _bias_files(manifest)
        if same_shards:
            self.shard_set = previous.shard_set  # same immutable shards; masks come from the new manifest
            self.meta, self._filters, self._keywords = previous.meta, previous._filters, previous._keywords
        else:
            self.shard_set = ShardSet(self.folder, manifest, mmap, search_params,
                                      previous.shard_set if previous is not None else None)
            self.meta, self._filters, self._keywords = MetadataReader(self.shard_set), None, None
        if same_bias and previous.searcher._factory is (engines or ModalitySearch):
            self.biases, self.searcher = previous.biases, previous.searcher
        else:
            self.biases = Biases(self.shard_set, manifest)
            self.searcher = Searcher(self.shard_set, self.biases, backend, engines)
        self.rows = RowMasks(self.folder, manifest, self.shard_set.shards)
        if warm:
            self.filters.warm()
            warm_in_background(self.folder, manifest, previous.manifest if previous is not None else None)

    @property
    def generation(self) -> int:
        return int(self.manifest.get("generation", 0))

    @property
    def filters(self) -> Filters:
        if self._filters is None:
            self._filters = Filters(self.folder, self.shard_set.shards, self.shard_set.rows)
        return self._filters

    @property
    def keywords(self) -> KeywordIndex:
        """BM25 keyword search over the shards' full-text files (opened on first use)."""
        if self._keywords is None:
            self._keywords = KeywordIndex(self.shard_set)
        return self._keywords

    def selection(self, target: str, where: Optional[str] = None, captioned: bool = False,
                  exclude: tuple = ()) -> Selection:
        """The rows a search of ``target`` may return (live, captioned for text, matching ``where``, not
        one of the global ids ``exclude``)."""
        sel = self.rows.base(target, captioned)
        sel = sel if where is None else sel & self.filters.selection(where)
        sel = self.without(sel, exclude) if len(exclude) else sel
        sel.spec, sel.generation = (target, where, captioned, tuple(exclude)), self.generation
        return sel

    def without(self, selection: Selection, ids) -> Selection:
        """``selection`` less the global ``ids`` (those in this snapshot)."""
        ids = np.asarray(list(ids), np.int64)
        ok, sh = self.shard_set.contains(ids)
        if not ok.any():
            return selection
        masks = list(selection.masks)
        for k in np.unique(sh[ok]):
            m = np.ones(int(selection.rows[k]), bool) if masks[k] is None else masks[k].copy()
            m[ids[ok & (sh == k)] - self.shard_set.starts[k]] = False
            masks[k] = m
        return Selection(masks, selection.rows)

    def ids(self, target: str) -> np.ndarray:
        """Global ids of the items a search of ``target`` can return."""
        parts = [s["offset"] + (np.arange(s["rows"]) if m is None else np.flatnonzero(m))
                 for s, m in zip(self.shard_set.shards, self.rows.base(target).masks)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def is_live(self, ids) -> np.ndarray:
        """Whether each global id is an item of this snapshot that is not deleted."""
        starts = self.shard_set.starts
        try:
            flat = np.asarray(ids, np.int64).ravel()
        except OverflowError:  # ids beyond int64 are in no index
            big = [int(i) for i in np.asarray(ids, object).ravel()]
            flat = np.array([i if 0 <= i < 2**63 else -1 for i in big], np.int64)
        ok, sh = self.shard_set.contains(flat)
        live = self.rows.live()
        for i in np.flatnonzero(ok):
            m = live.masks[sh[i]]
            ok[i] = m is None or bool(m[flat[i] - starts[sh[i]]])
        return ok
