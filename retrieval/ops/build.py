"""The build entry points: corpus (or precomputed embeddings) -> shards -> per-item bias offsets.

The store's indexer writes the shards; this module gives it the hook (``BiasExtension``) that adds
each new shard's offsets to the same commit and, for a folder without banks, computes them in the
run's last publish, so that the store never reaches up into the methods. Re-running a build on a
complete folder syncs it with the corpus: new items appended, changed ones replaced, gone ones deleted.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..corpus import DEFAULT_MAX_PIXELS, open_corpus
from ..embed import ClipModel, load_model
from ..embed.text_cache import save_text_tower
from ..store.indexer import DEFAULT_MEMORY_BUDGET, DEFAULT_SHARD_SIZE, index_corpus, write_embeddings
from ..errors import CorpusError, StorageError
from ..store.layout import MODALITIES
from ..store.manifest import require_manifest
from ..store.outfolder import check_out, committed
from .bias import BiasExtension, compute_biases
from .regions import add_regions

log = logging.getLogger("retrieval.build")


def check_modalities(modalities: Sequence[str]) -> list[str]:
    """``modalities`` in canonical order; ValueError for unknown ones or none (image is required:
    every item has an image)."""
    wanted = list(dict.fromkeys(modalities))
    bad = [m for m in wanted if m not in MODALITIES]
    if bad or "image" not in wanted:
        raise ValueError(f"modalities must include image and be among {', '.join(MODALITIES)}, got "
                         f"{', '.join(wanted) or 'none'}")
    return [m for m in MODALITIES if m in wanted]


def check_text_columns(columns: Optional[Sequence[str]], names: Sequence[str]) -> list[str]:
    """The columns keyword search indexes: the captions, then the named metadata columns (CorpusError
    for one the corpus does not have)."""
    wanted = ["caption"] + [c for c in (columns or ()) if c != "caption"]
    bad = [c for c in wanted[1:] if c not in names or c.startswith("_")]
    if bad:
        raise CorpusError(f"no metadata column {bad[0]!r} for keyword search (--text-columns); columns: "
                          f"{', '.join(n for n in names if not n.startswith('_'))}", usage=True)
    return list(dict.fromkeys(wanted))


def build_index(corpus: str | os.PathLike, out: str | os.PathLike, model: str = "ViT-B-32",
                pretrained: Optional[str] = "laion2b_s34b_b79k", *, batch_size: int = 64,
                shard_size: int = DEFAULT_SHARD_SIZE, index_key: Optional[str] = None,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, device: str = "auto", workers: int = 2,
                image_root: Optional[str] = None, image_column: Optional[str] = None,
                caption_column: Optional[str] = None, key_column: Optional[str] = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, recall_target: float = 0.95, progress: bool = True,
                bias_bank: Optional[str] = "generic", clip: Optional[ClipModel] = None,
                require_captions: bool = False, modalities: Sequence[str] = MODALITIES,
                report: Optional[list] = None, ray: Optional[str] = None, ray_actors: Optional[int] = None,
                ray_task_rows: Optional[int] = None, text_columns: Optional[Sequence[str]] = None,
                regions: bool = False, bias_later: bool = False, warm_text_cache: bool = False) -> dict:
    """Build, resume or sync the index folder at ``out``; returns its manifest.

    ``clip`` may pass an already loaded model (then ``model``/``pretrained``/``device`` are ignored).
    ``bias_bank`` ('generic' | 'corpus' | None) computes the bias offsets for exact BSAP/NNN search.
    Items without a caption are indexed (searchable by text->image and image->image) unless
    ``require_captions``. ``modalities``: which indexes to build ('image': text->image and
    image->image search; 'text': search among captions; text needs captions). ``report``, a list, receives the run's :class:`~retrieval.store.indexer.RunReport`.
    ``ray``: embed on Ray actors ('local' starts a local cluster; else a cluster address such as
    'auto'), ``ray_actors`` of them (default one per GPU, else per CPU), ``ray_task_rows`` inputs per
    task; the folder is the same as a single-process build's. ``text_columns``: the metadata columns
    keyword search reads besides the captions (default: the captions only), fixed at the first build.
    ``regions``: also store ComCLIP's regions of every image (``ops.regions``); a folder that has them
    gets the new shards' at every sync. The folder is published searchable (plain CLIP and keyword
    queries) before the bias offsets are computed, then again with them; ``bias_later`` returns at
    searchable, with the offsets recorded as pending (a rerun without it, or ``compute_biases``, adds them).
    ``warm_text_cache``: cache the model's text tower for later text queries (``embed.text_cache``;
    a CPU float32 model only), as a first text search would; the command line does.
    """
    if batch_size <= 0 or shard_size <= 0:
        raise ValueError("batch_size and shard_size must be positive")
    modalities = check_modalities(modalities)
    reader = open_corpus(corpus, image_root, image_column, caption_column, key_column, require_captions)
    text_columns = check_text_columns(text_columns, reader.metadata_schema.names)
    check_out(out)
    clip = clip or load_model(model, pretrained, device)
    settings = {"shard_size": shard_size, "index_key": index_key, "memory_budget": memory_budget,
                "max_pixels": max_pixels, "batch_size": batch_size, "workers": workers,
                "recall_target": recall_target, "require_captions": require_captions, "modalities": modalities,
                "text_columns": text_columns}
    source = None
    if ray is not None:
        from ..scale import RayBatches

        source = RayBatches(ray, ray_actors, **({"task_rows": ray_task_rows} if ray_task_rows else {}))
    extend = BiasExtension(out, clip, bias_bank, later=bias_later)
    manifest, run = index_corpus(reader, out, clip, settings, progress, extend=extend, source=source)
    if bias_bank and not bias_later and ("bias" not in manifest or manifest["bias"].get("stale")):
        pending = manifest.get("bias_pending") or {}  # a run stopped between searchable and debiased
        try:
            compute_biases(out, clip, bank=(manifest.get("bias") or pending).get("bank") or bias_bank,
                           bank_texts=pending.get("bank_texts"))
        except StorageError as e:
            raise StorageError(f"{e}; {committed(manifest)} committed and searchable, bias offsets not yet "
                               f"computed: free space and re-run the same command to resume") from None
        manifest = require_manifest(Path(out))
    if regions or (manifest.get("build") or {}).get("regions"):
        add_regions(out, clip)
        manifest = require_manifest(Path(out))
    if warm_text_cache:
        save_text_tower(clip)   # never raises: a cache that cannot be written only costs a later query speed
    if report is not None:
        report.append(run)
    return manifest


def build_from_embeddings(out: str | os.PathLike, image_emb: np.ndarray, text_emb: np.ndarray, model: dict,
                          rows=None, *, shard_size: int = DEFAULT_SHARD_SIZE,
                          index_key: Optional[str] = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                          recall_target: float = 0.95, bias_bank: Optional[str] = "corpus", clip=None,
                          bias_later: bool = False) -> dict:
    """Write an index folder from precomputed, row-aligned embeddings (e.g. another tool's output).

    ``model`` is the identity the embeddings come from (at least arch, embed_dim, logit_scale);
    ``rows``: the metadata, a pyarrow Table (written as it is: no per-row Python objects) or a
    list of dicts, each row with a unique non-empty string ``key`` (default: keys "0".."n-1"). Returns the manifest. The folder is
    published searchable first, then with its bias offsets (``bias_later``: return at searchable;
    ``compute_biases`` adds them).
    """
    return write_embeddings(out, image_emb, text_emb, model, rows, shard_size=shard_size, index_key=index_key,
                            memory_budget=memory_budget, recall_target=recall_target,
                            extend=BiasExtension(out, clip, bias_bank, later=bias_later))
