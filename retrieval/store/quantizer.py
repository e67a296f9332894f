"""One trained quantizer for every shard of a modality (DESIGN §11): before a first build gives its
deferred shards their indexes, the IVF/PQ quantizer of the shards' key is trained once on a random
sample drawn across all of them (on a GPU when faiss has one) and kept as the folder's trained empty
index (``faiss/trained_{modality}.index``); each shard is then a copy of it with its own rows added.
Every shard shares the lists, so shards can be merged (``ops.merge``) and appended shards cost what
first-build shards cost. Search parameters are tuned on the first shard added and kept with it.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from .combined import combine_vectors, combined_layout
from .faiss_index import new_index, trained_empty
from .files import save_faiss
from .integrity import file_record
from .keys import sample_ids, train_size
from .layout import MODALITIES, trained_file
from .masks import usable_rows
from .vectors import ShardVectors

log = logging.getLogger("retrieval.build")


def needs_training(key: str, d: int) -> bool:
    """Whether a combined index of ``key`` over dim-``d`` vectors must be trained (IVF, PQ, OPQ)."""
    fkey, dim = combined_layout(key, d)
    return not new_index(dim, fkey).is_trained


def shard_sample(counts: list[int], size: int, seed: int = 0) -> list[np.ndarray]:
    """Which of each shard's ``counts`` usable rows a sample of ``size`` rows drawn uniformly across
    all of them takes (pure): positions into each shard's usable rows, sorted."""
    total = int(sum(counts))
    picks = np.sort(sample_ids(total, min(size, total), seed)) if total else np.zeros(0, np.int64)
    edges = np.concatenate([[0], np.cumsum(counts)])
    return [picks[(picks >= a) & (picks < b)] - a for a, b in zip(edges[:-1], edges[1:])]


def train_shared(folder: Path, manifest: dict, seed: int = 0, offsets: Optional[dict] = None,
                 shifts: Optional[dict] = None) -> list[str]:
    """Train and keep one quantizer per modality for the deferred shards of its most common key that
    needs training (when the folder keeps none yet); returns the modalities trained. ``offsets``
    ({shard id: {modality: {method: [rows]}}}) and ``shifts`` ({method: {modality: s}}): the offsets
    coordinates the shards will hold (a lossy key's codebooks are trained on them; default zeros)."""
    done = []
    for modality in MODALITIES:
        if (manifest.get("trained") or {}).get(modality) is not None:
            continue
        pending = [s for s in manifest["shards"] if s["index"].get(modality, {}).get("pending")]
        keys = Counter(s["index"][modality]["key"] for s in pending)
        if not keys:
            continue
        key = keys.most_common(1)[0][0]
        d = pending[0]["dim"]
        if key == "Flat" or not needs_training(key, d):
            continue
        group = [s for s in pending if s["index"][modality]["key"] == key]
        usable = [usable_rows(folder, manifest, s, modality) for s in group]
        fkey, dim = combined_layout(key, d)
        picks = shard_sample([len(u) for u in usable], train_size(fkey, sum(len(u) for u in usable)), seed)
        taken = [(s, u[p]) for s, u, p in zip(group, usable, picks) if len(p)]
        parts = [ShardVectors(folder, s, modality).rows(rows) for s, rows in taken]
        vecs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        off = None
        if offsets and all(modality in offsets.get(s["id"], {}) for s, _ in taken):
            off = {mt: np.concatenate([offsets[s["id"]][modality][mt][rows] for s, rows in taken])
                   for mt in ("bsap", "nnn")}
        sample = combine_vectors(vecs, off, {mt: (shifts or {}).get(mt, {}).get(modality, 0.0)
                                             for mt in ("bsap", "nnn")}, dim)
        empty = trained_empty(sample, fkey, extra=dim - d)
        rel = trained_file(modality)
        save_faiss(folder / rel, empty)
        manifest.setdefault("trained", {})[modality] = {"key": fkey, "dim": dim, "file": rel, "params": None,
                                                        **file_record(folder / rel)}
        log.info("trained one %s quantizer on %d rows drawn across %d shards", fkey, len(sample), len(group))
        done.append(modality)
    return done
