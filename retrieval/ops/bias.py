"""Compute and store the per-item offsets for exact whole-corpus BSAP and NNN search (DESIGN §4).

For each shard and target modality (``image``: text->image search; ``text``: image->text search):
- ``bsap_{modality}_{k}.npy``: c_j = LSE_m(τ s(j, a_m)) / τ over the auxiliary bank a;
- ``nnn_{modality}_{k}.npy``: mean of the ``nnn_k`` largest s(r, j) over reference queries r
  (α is applied at query time, so changing α needs no recomputation).
The offsets are also the two extra coordinates of each shard's combined index (``store.combined``):
``compute_biases`` rewrites those coordinates in place in the index codes (SQfp16), or rebuilds a
lossy index from its vectors, into new index files. Banks (our choice, recorded in the manifest):
image targets use text prompts (the generic list below, user texts, or a seeded sample of the
corpus's caption embeddings) and caption embeddings as NNN references; text targets use seeded
samples of the corpus's image embeddings. Samples are drawn from live rows only (and, for captions,
rows that have one). The banks and references are saved (``bank_*.npy``, ``ref_nnn_*.npy``), so an
offset depends on its item only: appended shards get theirs from the same banks (``BiasExtension``).

Each computation writes a new generation (``bias/gNNNNNN/`` and the rewritten index files) and
publishes it with the one manifest write: a run killed at any point leaves the previous bank wholly
in force, and the superseded files are collected at the next publish.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import IndexFolderError
from ..store.combined import combine_vectors
from ..methods.rerank import bsap_offsets, nnn_bias
from ..store.files import save_faiss, save_npy
from ..store.generations import next_generation, publish
from ..store.integrity import file_record
from ..store.layout import (INDEX_FILE, MODALITIES, bank_path, bias_generation_dir, bias_path, index_file,
                            reference_path)
from ..store.lock import write_lock
from ..store.manifest import load_manifest
from ..store.masks import caption_mask, deleted_mask
from ..store.vectors import ShardVectors, read_all, set_offsets

GENERIC_PROMPTS = (
    "a photo.", "an image.", "a picture of something.", "a photo of an object.", "a photo of a thing.",
    "an image of something.", "a close-up photo.", "a blurry photo.", "a photo of a scene.", "a snapshot.",
    "a photo of a person.", "a photo of an animal.", "a photo of a place.", "a drawing.", "a picture.",
    "a photo taken outdoors.",
)
METHODS = ("bsap", "nnn")


def usable_rows(folder: Path, manifest: dict, shard: dict, modality: str) -> np.ndarray:
    """Local rows of ``shard`` a bank may sample for ``modality``: live, and captioned for text."""
    if modality not in shard["index"]:
        return np.zeros(0, np.int64)
    keep = np.ones(shard["rows"], bool)
    dead = deleted_mask(folder, manifest, shard)
    if dead is not None:
        keep &= ~dead
    if modality == "text":
        cap = caption_mask(folder, shard)
        if cap is not None:
            keep &= cap
    return np.flatnonzero(keep)


def _loader(folder: Path, shard: dict, modality: str):
    import faiss

    return lambda: faiss.read_index(str(folder / shard["files"][INDEX_FILE[modality]]), faiss.IO_FLAG_MMAP_IFC)


def _sample_rows(folder: Path, manifest: dict, shards: list[dict], modality: str, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of usable stored embeddings of ``modality`` across shards (float32)."""
    rows = [usable_rows(folder, manifest, s, modality) for s in shards]
    total = sum(len(r) for r in rows)
    if total == 0:
        raise IndexFolderError(f"{folder} has no live {'captioned ' if modality == 'text' else ''}rows to sample "
                               f"a bank from")
    ids = np.sort(np.random.default_rng(seed).choice(total, min(size, total), replace=False))
    out, start = [], 0
    for s, r in zip(shards, rows):
        mine = ids[(ids >= start) & (ids < start + len(r))] - start
        if len(mine):
            out.append(ShardVectors(folder, s, modality, _loader(folder, s, modality)).rows(r[mine]))
        start += len(r)
    return np.concatenate(out)


def offsets_of(vectors: np.ndarray, bank: np.ndarray, refs: np.ndarray, tau: float, nnn_k: int) -> dict:
    """{"bsap": [n], "nnn": [n]} of vectors [n, d]."""
    x = np.asarray(vectors, np.float32)
    return {"bsap": bsap_offsets(x, bank, tau), "nnn": nnn_bias(x, refs, k=nnn_k)}


class _Files:
    """Writes files into a bias folder and keeps their records for the manifest."""

    def __init__(self, folder: Path, files: dict):
        self.folder, self.files = folder, files

    def save(self, path: Path, write) -> None:
        write(path)
        self.files[path.relative_to(self.folder).as_posix()] = file_record(path)


def _save_offsets(folder: Path, shard: dict, offsets: dict, where: str, out: _Files) -> None:
    for modality, per in offsets.items():
        for method in METHODS:
            out.save(bias_path(folder, method, modality, shard["id"], where), lambda p: save_npy(p, per[method]))


def rewrite_index(folder: Path, manifest: dict, shard: dict, modality: str, offsets: dict, shifts: dict,
                  generation: int) -> None:
    """Give a shard's combined index new offsets coordinates: in place in the codes (SQfp16) or, for a
    lossy index, rebuilt from its vectors; written under a new name (the old one is retired)."""
    import faiss

    from ..store.shard import build_combined

    info = shard["index"].get(modality)
    if info is None or INDEX_FILE[modality] not in shard["files"]:
        return  # no index (Flat: offsets are applied from the bias files at query time)
    d = shard["dim"]
    index = faiss.read_index(str(folder / shard["files"][INDEX_FILE[modality]]))
    cols = combine_vectors(np.zeros((shard["rows"], d), np.float32), offsets,
                           {m: shifts[m][modality] for m in METHODS}, index.d)[:, d:d + 2]
    if not set_offsets(index, cols, d):  # lossy codes: retrain and refill with the offsets in place
        usable = np.arange(shard["rows"]) if modality == "image" else usable_rows(folder, manifest, shard, modality)
        index, info["params"], _ = build_combined(folder, manifest, modality, info["key"], read_all(folder, shard, modality),
                                                  usable, offsets, {"recall_target": manifest["build"].get("recall_target", 0.95)},
                                                  seed=shard["id"], keep_trained=False)
        _retrain_kept(folder, manifest, modality, index, info["params"], generation)
    rel = index_file(shard["id"], modality, generation)
    save_faiss(folder / rel, index)
    shard["files"][INDEX_FILE[modality]] = rel
    rec = file_record(folder / rel)
    for field in ("sha256", "bytes", "sample"):
        shard.setdefault(field, {})[INDEX_FILE[modality]] = rec[field]


def _retrain_kept(folder: Path, manifest: dict, modality: str, index, params: str, generation: int) -> None:
    """After a lossy index was retrained with real offsets, the folder's kept quantizer of the same
    key is replaced by an empty copy of it (appended shards then encode offsets as well)."""
    import faiss

    from ..store.layout import trained_file

    kept = (manifest.get("trained") or {}).get(modality)
    if kept is None or kept.get("dim") != index.d or kept.get("generation") == generation:
        return
    empty = faiss.clone_index(index)
    empty.reset()
    rel = trained_file(modality, generation)
    save_faiss(folder / rel, empty)
    manifest["trained"][modality] = {**kept, "file": rel, "params": params, "generation": generation,
                                     **file_record(folder / rel)}


def compute_biases(folder: str | os.PathLike, clip=None, bank: str = "generic", bank_texts: Optional[Sequence[str]] = None,
                   bank_size: int = 64, nnn_k: int = 128, ref_size: int = 4096, tau: Optional[float] = None,
                   seed: int = 0) -> dict:
    """(Re)compute the bias offsets of a complete index folder; returns the manifest's ``bias`` section.

    ``bank``: 'generic' (GENERIC_PROMPTS, needs ``clip``), 'texts' (``bank_texts``, needs ``clip``) or
    'corpus' (``bank_size`` sampled caption embeddings; no model needed). The shards' combined indexes
    get the new offsets as their extra coordinates.
    """
    folder = Path(folder)
    _check_sizes(bank_size=bank_size, nnn_k=nnn_k, ref_size=ref_size)
    with write_lock(folder):
        m = load_manifest(folder)
        if m is None or not m.get("complete"):
            raise IndexFolderError(f"{folder} is not a complete index folder")
        apply_biases(folder, m, clip, bank, bank_texts, bank_size, nnn_k, ref_size, tau, seed)
        publish(folder, m)
    return m["bias"]


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")


def apply_biases(folder: Path, m: dict, clip=None, bank: str = "generic", bank_texts: Optional[Sequence[str]] = None,
                 bank_size: int = 64, nnn_k: int = 128, ref_size: int = 4096, tau: Optional[float] = None,
                 seed: int = 0) -> None:
    """Write a new generation of bias files and rewritten indexes for manifest ``m`` (whose shards'
    files are written) and set its ``bias`` section; the caller publishes ``m``."""
    shards = [s for s in m["shards"] if s["rows"] > 0]
    tau = float(tau if tau is not None else m["model"]["logit_scale"])
    t0 = time.perf_counter()
    texts, banks, refs = _banks(folder, m, shards, clip, bank, bank_texts, bank_size, ref_size, seed)
    gen = next_generation(m)
    where = bias_generation_dir(gen)
    shutil.rmtree(folder / where, ignore_errors=True)  # what a killed run of this generation left
    out = _Files(folder, {})
    for modality in MODALITIES:
        out.save(bank_path(folder, modality, where), lambda p: save_npy(p, banks[modality].astype(np.float32)))
        out.save(reference_path(folder, modality, where), lambda p: save_npy(p, refs[modality].astype(np.float32)))
    per_shard, shifts = {}, {"bsap": {}, "nnn": {}}
    for s in shards:
        per_shard[s["id"]] = {mod: offsets_of(read_all(folder, s, mod), banks[mod], refs[mod], tau, nnn_k)
                              for mod in MODALITIES if mod in s["index"]}
        _save_offsets(folder, s, per_shard[s["id"]], where, out)
    for modality in MODALITIES:  # the mean offset of the live, usable rows centres the extra coordinates
        for method in METHODS:
            live = [per_shard[s["id"]][modality][method][usable_rows(folder, m, s, modality)]
                    for s in shards if modality in per_shard[s["id"]]]
            shifts[method][modality] = float(np.mean(np.concatenate(live), dtype=np.float64)) if live else 0.0
    for s in shards:
        for modality, offsets in per_shard[s["id"]].items():
            rewrite_index(folder, m, s, modality, offsets, shifts, gen)
    m["bias"] = {"tau": tau, "bank": bank, "bank_rows": {k: int(len(v)) for k, v in banks.items()},
                 "bank_texts": texts, "nnn_k": nnn_k, "nnn_ref_rows": {k: int(len(v)) for k, v in refs.items()},
                 "seed": seed, "shift": shifts, "dir": where, "files": out.files,
                 "seconds": round(time.perf_counter() - t0, 3)}


def _banks(folder: Path, m: dict, shards: list[dict], clip, bank: str, bank_texts, bank_size: int, ref_size: int,
           seed: int):
    """(bank texts or None, BSAP banks by modality, NNN references by modality)."""
    texts = None
    if bank in ("generic", "texts"):
        texts = list(GENERIC_PROMPTS if bank == "generic" else (bank_texts or []))
        if not texts:
            raise ValueError("bank 'texts' needs at least one text")
        if clip is None:
            raise ValueError(f"bank {bank!r} needs the index's model to encode its prompts")
        from ..embed import Encoder

        text_bank = Encoder(clip).texts(texts)
    elif bank == "corpus":
        text_bank = _sample_rows(folder, m, shards, "text", bank_size, seed)
    else:
        raise ValueError(f"unknown bank {bank!r}; choose generic, texts or corpus")
    banks = {"image": text_bank, "text": _sample_rows(folder, m, shards, "image", bank_size, seed + 1)}
    refs = {"image": _sample_rows(folder, m, shards, "text", ref_size, seed + 2),
            "text": _sample_rows(folder, m, shards, "image", ref_size, seed + 3)}
    return texts, banks, refs


class BiasExtension:
    """The writer's ``Extension``: appended shards get offsets from the stored banks and references;
    a folder without banks gets them (``bank``: 'generic' | 'texts' | 'corpus'; None: no biases) in the
    run's last publish, with its indexes rewritten, instead of in a second publish after it."""

    def __init__(self, folder: str | os.PathLike, clip=None, bank: Optional[str] = None,
                 bank_texts: Optional[Sequence[str]] = None):
        self.folder, self.clip, self.bank, self.bank_texts = Path(folder), clip, bank, bank_texts

    def finish(self, manifest: dict) -> None:
        if self.bank is None or manifest.get("bias") or not any(s["rows"] for s in manifest["shards"]):
            return
        apply_biases(self.folder, manifest, self.clip, self.bank, self.bank_texts)

    def offsets(self, manifest: dict, vectors: dict) -> Optional[dict]:
        section = manifest.get("bias")
        if not section:
            return None
        where = section.get("dir")
        if not where or not all(reference_path(self.folder, mod, where).exists() for mod in MODALITIES):
            section["stale"] = True  # biases from before stored references: recomputed after the run
            return None
        return {mod: offsets_of(vectors[mod], np.load(bank_path(self.folder, mod, where)),
                                np.load(reference_path(self.folder, mod, where)), section["tau"], section["nnn_k"])
                for mod in MODALITIES}

    def save(self, manifest: dict, entry: dict, offsets: dict) -> None:
        section = manifest["bias"]
        _save_offsets(self.folder, entry, {mod: offsets[mod] for mod in offsets}, section["dir"],
                      _Files(self.folder, section["files"]))


def save_shard_offsets(folder: str | os.PathLike, manifest: dict, shard: dict, offsets: dict) -> None:
    """Write given offsets ({modality: {method: [n]}}) of a shard beside the current generation's files."""
    section = manifest["bias"]
    _save_offsets(Path(folder), shard, offsets, section["dir"], _Files(Path(folder), section["files"]))
