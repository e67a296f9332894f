"""``open_index`` and :class:`Index`: the query API over one index folder.

The Index holds one :class:`~retrieval.query.snapshot.Snapshot` (the manifest and everything opened
from it) and only wires calls to it: a search goes Index -> rerank method -> modality engine ->
backend and comes straight back. ``refresh`` swaps in a newer snapshot atomically (after a delete,
a sync, or when a server notices a newer manifest); calls in flight finish on the old one.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from ..embed import ClipModel, describe, same_model
from ..errors import IndexFolderError
from ..store.integrity import require_intact
from ..store.manifest import load_manifest, recorded_model, require_manifest
from .backends import pick_backend
from .builder import QueryBuilder
from .examples import Examples
from .fusion import with_keywords
from .rerankers import Deduplicated, make_method
from .rows import RowQueries
from .searcher import EngineFactory
from .snapshot import Snapshot, only_shards
from .spec import QuerySpec
from .topk import above

if TYPE_CHECKING:
    from ..store.masks import KeyLookup


class Index(RowQueries):
    """A built index folder, opened read-only (see :func:`open_index` for the arguments)."""

    def __init__(self, folder: str | os.PathLike, clip: Optional[ClipModel] = None, mmap: Optional[bool] = None,
                 backend: str = "auto", search_params: Optional[str] = None, verify: bool = False, *,
                 shard_filter: Optional[Callable[[dict], bool]] = None, engines: Optional[EngineFactory] = None,
                 warm: bool = False):
        """``shard_filter``: open only the shards it accepts (a remote shard group; ids stay global);
        ``engines``: how each modality is searched (``query.searcher.Searcher``; e.g. a Ray fan-out)."""
        self.folder = Path(folder)
        m = require_manifest(self.folder)
        if verify:
            require_intact(self.folder, m)
        if not m.get("complete"):
            raise IndexFolderError(f"{self.folder} is incomplete; re-run its build to finish it")
        self.clip = None
        self._mmap, self._params, self.backend_name = mmap, search_params, pick_backend(backend)
        self._keep, self._engines, self._warm = shard_filter, engines, warm
        self._snap = self._open(m)
        if clip is not None:
            self.attach_model(clip)

    def attach_model(self, clip: ClipModel) -> None:
        """Use ``clip`` to encode queries; it must be the model the index was built with."""
        if not same_model(self.manifest["model"], clip.identity):
            scale = f" (logit scale {clip.logit_scale:.1f})" if self.manifest["model"].get("declared") else ""
            raise IndexFolderError(f"{self.folder} was built with {describe(self.manifest['model'])}; "
                                   f"the query model is {describe(clip.identity)}{scale}")
        self.clip = clip

    def refresh(self) -> bool:
        """Swap in the folder's newer manifest, if there is one (atomically); whether it changed."""
        m = load_manifest(self.folder)
        if m is None or not m.get("complete") or m.get("generation", 0) == self._snap.generation:
            return False
        self._snap = self._open(m, self._snap)
        return True

    def use_engines(self, engines: Optional[EngineFactory]) -> None:
        """Search through ``engines`` from now on (None: in-process); swaps the snapshot atomically."""
        self._engines = engines
        self._snap = self._open(self._snap.manifest, self._snap)

    def _open(self, manifest: dict, previous: Optional[Snapshot] = None) -> Snapshot:
        """A snapshot of ``manifest`` (its shards this index keeps) opened as this index opens them."""
        return Snapshot(self.folder, only_shards(manifest, self._keep), self.backend_name, self._mmap, self._params,
                        previous=previous, engines=self._engines, warm=self._warm)

    def delete(self, keys) -> "KeyLookup":
        """Delete the items of ``keys`` (tombstones, one manifest write) and refresh; returns which
        were found, missing or deleted already."""
        from ..store.held import delete_keys

        found = delete_keys(self.folder, keys)
        self.refresh()
        return found

    # ---- the current snapshot --------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        """The current consistent view (manifest and everything opened from it)."""
        return self._snap

    @property
    def open_options(self) -> dict:
        """How this index was opened (backend, mmap, search_params): what another process repeats."""
        return {"backend": self.backend_name, "mmap": self._mmap, "search_params": self._params}

    @property
    def manifest(self) -> dict:
        return self._snap.manifest

    @property
    def shard_set(self):
        return self._snap.shard_set

    @property
    def biases(self):
        return self._snap.biases

    @property
    def meta(self):
        """The metadata reader (Parquet row groups, LRU-cached)."""
        return self._snap.meta

    @property
    def shards(self) -> list[dict]:
        """The manifest entries of the non-empty shards."""
        return self._snap.shard_set.shards

    offsets = property(lambda self: self._snap.shard_set.starts, doc="Global id of each shard's first row.")

    def __len__(self) -> int:
        """Live items (deleted ones excluded)."""
        return self._snap.rows.live().total

    @property
    def dim(self) -> int:
        return self._snap.shard_set.dim

    def ids(self, target: str = "image") -> np.ndarray:
        """Global ids of the items a search of ``target`` can return (live; captioned for text)."""
        return self._snap.ids(target)

    def is_live(self, ids) -> np.ndarray:
        """Whether each global id is an item of this index that is not deleted."""
        return self._snap.is_live(ids)

    # ---- search ----------------------------------------------------------------------------
    def search(self, queries=None, k: int = 10, target: str = "image", rerank: str = "clip",
               candidates: Optional[int] = None, tau: Optional[float] = None, lam: Optional[float] = None,
               alpha: float = 0.75, where: Optional[str] = None, dedup: Optional[float] = None,
               captioned: bool = False, text_match: Optional[Sequence[str]] = None, fusion: str = "rrf",
               keyword_weight: Optional[float] = None, examples: Optional[Examples] = None,
               min_score: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global ids) of query embeddings [n, d] among ``target`` items; ids -1 pad a row
        when fewer than k items qualify. With a text, an image path or bytes, or nothing, a
        :class:`~retrieval.query.builder.QueryBuilder` instead (``idx.search("a dog").where(...)
        .rerank("nnn").limit(10).to_list()``).

        ``rerank``: 'clip' (cosine), 'bsap' (balanced score b_j), 'hybrid' (BSAP-H: s - (1-λ) c_j,
        ``lam`` = λ the weight of CLIP; None: as ``retrieval bias`` chose it from the index's own
        pairs), 'nnn' (s - α bias). BSAP, BSAP-H and NNN search the whole corpus exactly with the
        stored offsets; with ``candidates=N`` any method reranks CLIP's top N instead. ``where``: a SQL boolean expression over the metadata columns; ``dedup``:
        collapse near-duplicates (cosine >= the threshold, e.g. 0.94); ``captioned``: only items
        with a caption. ``text_match``: one keyword query per query row, fused with the method's
        ranking (``query.fusion``: ``fusion`` 'rrf' or 'weighted' with ``keyword_weight``, default
        0.5). ``examples``: search by positive and negative examples instead (``query.examples``; the
        query rows are ignored, the examples that are rows never returned). ``min_score``: drop results
        scoring below it (the method's own score). Deleted items are never returned.
        """
        if queries is None or isinstance(queries, (str, bytes, os.PathLike)):  # the fluent API: a builder
            image = queries if isinstance(queries, (bytes, os.PathLike)) else None
            return QueryBuilder(self, QuerySpec(text=queries if isinstance(queries, str) else None, image=image,
                                                k=k, target=target))
        check_search_options(candidates=candidates, tau=tau, lam=lam, alpha=alpha, dedup=dedup)
        snap = self._snap
        lam = snap.biases.lam(target) if lam is None else lam
        method = make_method(rerank, float(tau if tau is not None else snap.biases.tau()), candidates, lam, alpha)
        selection = snap.selection(target, where, captioned, examples.ids if examples is not None else ())
        if examples is not None:
            method, queries = examples.method(method, rerank, candidates), examples.query()
        if text_match is not None:
            method = with_keywords(method, snap.keywords, text_match, len(np.atleast_2d(queries)), fusion,
                                   keyword_weight)
        if dedup is not None:
            method = Deduplicated(method, float(dedup))
        return above(*snap.searcher.search(queries, k, target, method, selection), min_score)


def check_search_options(candidates=None, tau=None, lam=None, alpha: float = 0.75, dedup=None) -> None:
    """ValueError naming the first search option out of its range (the HTTP API's ranges)."""
    def number(name, v, lo, hi, lo_open=False):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or not (lo < v if lo_open else lo <= v) or v > hi:
            raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")

    if candidates is not None and (not isinstance(candidates, numbers.Integral) or isinstance(candidates, bool)
                                   or not 1 <= candidates <= 100_000):
        raise ValueError(f"candidates must be an integer in [1, 100000], got {candidates!r}")
    if tau is not None:
        number("tau", tau, 0.0, 1e4, lo_open=True)
    if lam is not None:
        number("lam", lam, 0.0, 1.0)
    number("alpha", alpha, 0.0, 10.0)
    if dedup is not None:
        number("dedup", dedup, 0.0, 1.0, lo_open=True)


def open_index(folder: str | os.PathLike, clip: Union[ClipModel, str, None] = None, backend: str = "auto",
               mmap: Optional[bool] = None, search_params: Optional[str] = None, verify: bool = False,
               warm: bool = False) -> Index:
    """Open ``folder`` for search (model checked against the manifest when given).

    ``clip``: a loaded model, None (search by embeddings only), or 'auto' to load the model the
    manifest records. ``backend``: 'auto' (faiss-gpu if faiss has GPUs, torch if CUDA, else
    faiss-cpu), or one of them. ``mmap``: None memory-maps Flat shards and reads IVF/HNSW shards
    into RAM; True/False for all. ``search_params`` (e.g. 'nprobe=16' or 'efSearch=128') replaces the
    build's tuned parameters of every non-Flat shard. Opening always checks every file's size and a
    sampled fingerprint against the manifest; ``verify=True`` first checks every byte (sha256).
    ``warm=True`` (what ``retrieval serve`` uses) prepares in a background thread, at open and at each
    reload, what the first ``where`` filter needs (DuckDB's view over the metadata, ~30 ms), and asks
    the kernel for the pages of the search files (``store.warm``: index files first, then offsets,
    then the npy files, within half the memory available), so that the first queries after a start
    do not wait on one page fault at a time.
    """
    auto = isinstance(clip, str)
    if auto and clip != "auto":
        raise ValueError(f"clip must be a loaded model, None or 'auto', got {clip!r}")
    index = Index(folder, None if auto else clip, backend=backend, mmap=mmap, search_params=search_params,
                  verify=verify, warm=warm)
    if auto:  # the files are checked before the model is loaded
        index.attach_model(recorded_model(folder))
    return index
