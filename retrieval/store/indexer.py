"""The indexer: corpus -> embedded shards (npy + Parquet + faiss); or precomputed embeddings -> shards.

One algorithm for a first build, a resume after a kill and a sync after the corpus changed: plan the
run by key (``plan.plan_run``: added, changed, deleted), tombstone what left the corpus, embed what
is new or changed, and commit shard by shard (``writer.ShardWriter``), each commit one complete
published generation. A first build is marked complete at its end; a sync keeps a complete folder
complete at every commit. Per-item bias offsets come from the ``extend`` hook the build entry point
(:mod:`retrieval.ops.build`) passes, so the store never reaches up into the methods.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

import numpy as np

from ..corpus import CorpusReader
from ..embed import ClipModel
from ..errors import CorpusError, IndexFolderError, StorageError
from .atomic import remove_stale_temps
from .generations import next_generation, publish
from .layout import ERRORS, MODALITIES
from .lock import write_lock
from .manifest import load_manifest, new_manifest
from .masks import apply_tombstones
from .offsets import build_pending
from .outfolder import check_existing, check_index_key, committed, prepare_out
from .plan import plan_run
from .checks import check_unit_rows
from .rows import rows_table
from .writer import Extend, ShardWriter, read_errors, update_counts

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("retrieval.build")
DEFAULT_SHARD_SIZE = 100_000
DEFAULT_MEMORY_BUDGET = 4 * 2**30


@dataclass
class RunReport:
    """What one run did: ``+added, -deleted, changed`` and how many items were already up to date."""

    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0
    held: int = 0  # corpus items whose keys the user deleted: left out until restored
    first_build: bool = True

    def line(self) -> str:
        return f"+{self.added} added, -{self.deleted} deleted, {self.changed} changed"


@dataclass
class Embedded:
    """One batch of embedded rows, in corpus order: what the writer commits."""

    img: np.ndarray                 # [n, d] float32
    txt: Optional[np.ndarray]       # [rows with a caption, d] float32, or None
    rows: list
    has_caption: list
    errors: list
    end_pos: int


# (reader, model, settings, input positions or None for all) -> embedded batches in corpus order
Source = Callable[[CorpusReader, ClipModel, dict, Optional[np.ndarray]], Iterator[Embedded]]


def local_batches(reader: CorpusReader, clip: ClipModel, settings: dict,
                  positions: Optional[np.ndarray]) -> Iterator[Embedded]:
    """Decode with a DataLoader (``settings['workers']``) and embed in this process."""
    from ..embed import Encoder, iter_batches  # torch: only when embedding

    encoder = Encoder(clip)
    for batch in iter_batches(reader, clip.preprocess, clip.tokenizer, settings["batch_size"], settings["workers"],
                              positions, settings["max_pixels"], require_captions=settings["require_captions"]):
        img = txt = None
        if batch.rows:
            img = encoder.images(batch.images)
            embed_text = batch.tokens is not None and "text" in settings.get("modalities", MODALITIES)
            txt = encoder.tokens(batch.tokens) if embed_text else None
        else:
            img = np.zeros((0, clip.dim), np.float32)
        yield Embedded(img, txt, batch.rows, batch.has_caption, batch.errors, batch.end_pos)


def index_corpus(reader: CorpusReader, out: str | Path, clip: ClipModel, settings: dict, progress: bool = True,
                 extend: Optional[Extend] = None, source: Optional[Source] = None) -> tuple[dict, RunReport]:
    """Build, resume or sync ``out`` from ``reader``; returns (manifest, what this run did). ``settings``:
    shard_size, index_key, memory_budget, max_pixels, batch_size, workers, recall_target, require_captions.
    ``source`` embeds the planned positions (default :func:`local_batches`; ``scale.ray_build`` spreads
    them over Ray actors); this process alone writes the folder and its manifest."""
    out = Path(out)
    settings = {"require_captions": False, **settings, "dim": clip.dim}
    check_index_key(settings["index_key"], clip.dim)
    existing = check_existing(out, clip, reader, settings)
    prepare_out(out)
    with write_lock(out):
        try:
            return _run(reader, out, clip, settings, existing, progress, extend, source or local_batches)
        except StorageError as e:
            m = load_manifest(out) or {"shards": []}
            raise StorageError(f"{e}; {committed(m)} committed: free space and re-run the same command "
                               f"to resume") from None


def _run(reader: CorpusReader, out: Path, clip: ClipModel, settings: dict, existing: Optional[dict],
         progress: bool, extend: Optional[Extend], source: Source) -> tuple[dict, RunReport]:
    t_start = time.perf_counter()
    remove_stale_temps(out)
    manifest = existing or new_manifest(clip.identity, reader.describe(), dict(settings))
    resumed = len(manifest["shards"])
    plan = plan_run(reader, out, existing, read_errors(out) if existing else [])
    report = RunReport(changed=len(plan.replaced), deleted=len(plan.deleted), unchanged=plan.unchanged, held=plan.held,
                       first_build=not manifest.get("complete"))
    if manifest.get("complete") and plan.todo is not None and len(plan.todo) == 0 and len(plan.deleted) == 0:
        return manifest, report  # in step with the corpus: nothing to write
    if len(plan.deleted):
        apply_tombstones(out, manifest, plan.deleted, next_generation(manifest))
        publish(out, manifest)
    if plan.todo is not None and not manifest.get("complete"):   # the key rule's budget is for the whole index
        manifest["build"].setdefault("total_rows", plan.inputs)
    settings = {**settings, "total_rows": manifest["build"].get("total_rows")}
    writer = ShardWriter(out, manifest, reader.metadata_schema, settings, plan.kept, dict(plan.replaced), extend)
    t_model = 0.0
    n_new = 0
    from tqdm import tqdm

    total = None if plan.todo is None else len(plan.todo)
    bar = tqdm(desc="embedding", unit="img", total=total, disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    try:
        batches = source(reader, clip, settings, plan.todo)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)  # the time spent waiting for embeddings (decode + model)
            if batch is None:
                break
            t_model += time.perf_counter() - t0
            n_new += len(batch.rows)
            writer.add(batch.img, batch.txt, batch.rows, batch.has_caption, batch.errors, batch.end_pos)
            bar.update(len(batch.rows) + len(batch.errors) - sum(e["action"] == "repaired" for e in batch.errors))
            report.skipped += sum(e["action"] == "skipped" for e in batch.errors)
            bar.set_postfix(shards=len(manifest["shards"]), skipped=report.skipped)
        gone = list(writer.replaced.values())  # changed items whose new version failed: deleted all the same
        if gone:
            apply_tombstones(out, manifest, gone, next_generation(manifest))
        writer.finish()
    finally:
        bar.close()
    report.added = n_new - (len(plan.replaced) - len(writer.replaced))
    elapsed = time.perf_counter() - t_start
    update_counts(manifest, writer.errors, plan.inputs if plan.todo is not None else writer.last_end)
    if manifest["counts"]["live"] == 0 and report.first_build:
        corpus = reader.describe().get("path")
        raise CorpusError(f"no usable items in {corpus}: {manifest['counts']['skipped']} skipped, "
                          f"see {out / ERRORS}")
    manifest["stats"] = {
        "elapsed_s": round(elapsed, 3), "embed_s": round(t_model, 3), "new_rows": n_new,
        "rows_per_s": round(n_new / elapsed, 3) if elapsed else None, "last_run": report.line(),
        "resumed_from_shard": resumed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    publish_complete(out, manifest, extend)
    return manifest, report


def write_embeddings(out: str | Path, image_emb: np.ndarray, text_emb: np.ndarray, model: dict,
                     rows=None, *, shard_size: int = DEFAULT_SHARD_SIZE,
                     index_key: Optional[str] = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                     recall_target: float = 0.95, extend: Optional[Extend] = None) -> dict:
    """Shards from precomputed, row-aligned embeddings; returns the (complete) manifest. A text row of
    zeros marks an item without a caption."""
    img, txt = np.asarray(image_emb), np.asarray(text_emb)
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"image and text embeddings must be 2-D and row-aligned, got {img.shape} and {txt.shape}")
    table = rows_table(rows, len(img))
    check_unit_rows(img, "image embeddings")
    check_unit_rows(txt, "text embeddings", zero_ok=True)
    out = Path(out)
    if load_manifest(out) is not None:
        raise IndexFolderError(f"{out} already holds an index; use another folder", usage=True)
    model = {"embed_dim": img.shape[1], "logit_scale": 100.0, "context_length": 77, **model}
    settings = {"shard_size": shard_size, "index_key": index_key, "memory_budget": memory_budget,
                "recall_target": recall_target, "dim": img.shape[1], "max_pixels": None, "total_rows": len(img)}
    manifest = new_manifest(model, {"type": "embeddings", "path": None}, dict(settings))
    chunks = ((img[i:i + shard_size], txt[i:i + shard_size], table.slice(i, shard_size))
              for i in range(0, len(img), shard_size))
    prepare_out(out)
    with write_lock(out):
        return write_chunks(out, manifest, chunks, table.schema, settings, extend, checked=True)


def write_chunks(out: Path, manifest: dict, chunks: Iterable[tuple[np.ndarray, np.ndarray, "pa.Table"]], schema,
                 settings: dict, extend: Optional[Extend] = None, checked: bool = False) -> dict:
    """Commit row-aligned chunks (image [n, d], text [n, d] with zero rows for items without a caption,
    a pyarrow Table of n metadata rows in ``schema``) after the rows ``manifest`` already holds, under the caller's write lock; then
    build what was deferred and publish the folder complete. A kill leaves the last commit, from which
    a rerun with the same ``manifest`` resumes (the chunks it gives start after ``committed_rows``).
    ``checked``: the caller already checked every row (``store.checks``)."""
    start = committed_rows(manifest)
    writer = ShardWriter(out, manifest, schema, settings, [], extend=extend)
    pos = start
    for img, txt, rows in chunks:  # kept in their dtype: the writer stores fp16 anyway
        has = np.abs(txt).max(axis=1) > 0 if len(txt) else np.zeros(0, bool)
        positions = np.arange(pos, pos + rows.num_rows)
        pos += rows.num_rows
        txt = np.asarray(txt)
        writer.add(np.asarray(img), txt if has.all() else txt[has], rows, has.tolist(), [], pos, checked=checked,
                   positions=positions)
        del img, txt, rows, has  # before the next chunk is read: about one chunk in memory
    writer.finish()
    update_counts(manifest, [], pos)
    publish_complete(out, manifest, extend)
    return manifest


def publish_complete(out: Path, manifest: dict, extend: Optional[Extend]) -> None:
    """The run's last publishes, in two generations. First the folder *searchable*: the indexes
    deferred until then (built once, with zero offsets), ``complete``, and what the extension will
    add (``announce``); then the extension's banks and offsets (``finish``), when it computes them
    now. A kill between the two leaves a complete folder that serves plain CLIP and keyword queries
    and refuses BSAP/NNN ones as pending, until a rerun (or ``retrieval bias``) adds them."""
    build_pending(out, manifest, next_generation(manifest))
    manifest["complete"] = True
    if extend is not None:
        extend.announce(manifest)
    publish(out, manifest)
    if extend is not None and extend.finish(manifest):
        publish(out, manifest)


def committed_rows(manifest: dict) -> int:
    """Input rows consumed by the shards committed so far (their last ``end_pos``)."""
    return max((s.get("end_pos", 0) for s in manifest["shards"]), default=0)
