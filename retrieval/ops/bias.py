"""Compute and store the per-item offsets for exact whole-corpus BSAP and NNN search (DESIGN §4).

For each shard and target modality (``image``: text->image search; ``text``: image->text search):
- ``bsap_{modality}_{k}.npy``: c_j = LSE_m(τ s(j, a_m)) / τ over the auxiliary bank a;
- ``nnn_{modality}_{k}.npy``: mean of the ``nnn_k`` largest s(r, j) over reference queries r
  (α is applied at query time, so changing α needs no recomputation).
Banks (our choice, recorded in the manifest): image targets use text prompts (the generic list below,
user texts, or a seeded sample of the corpus's caption embeddings) and caption embeddings as NNN
references; text targets use seeded samples of the corpus's image embeddings. Samples are drawn from
live rows only (and, for captions, rows that have one). The banks and references are saved
(``bank_*.npy``, ``ref_nnn_*.npy``), so offsets are per item and independent of other items:
appended shards get theirs from the same banks (``extend_biases``) without recomputing the rest.

Each computation writes a new generation folder ``bias/gNNNNNN/`` and publishes it with the one
manifest write (``store.generations``): a run killed at any point leaves the previous bank wholly in
force, and the superseded files are collected at the next publish.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import IndexFolderError
from ..methods.rerank import bsap_offsets, nnn_bias
from ..store.files import save_faiss, save_npy
from ..store.generations import next_generation, publish
from ..store.integrity import file_record
from ..store.layout import (EMB_FILE, INDEX_FILE, MODALITIES, augmented_path, bank_path, bias_generation_dir,
                            bias_path, reference_path)
from ..store.lock import write_lock
from ..store.manifest import load_manifest
from ..store.masks import caption_mask, deleted_mask

GENERIC_PROMPTS = (
    "a photo.", "an image.", "a picture of something.", "a photo of an object.", "a photo of a thing.",
    "an image of something.", "a close-up photo.", "a blurry photo.", "a photo of a scene.", "a snapshot.",
    "a photo of a person.", "a photo of an animal.", "a photo of a place.", "a drawing.", "a picture.",
    "a photo taken outdoors.",
)
METHODS = ("bsap", "nnn")


def usable_rows(folder: Path, manifest: dict, shard: dict, modality: str) -> np.ndarray:
    """Local rows of ``shard`` a bank may sample for ``modality``: live, and captioned for text."""
    keep = np.ones(shard["rows"], bool)
    dead = deleted_mask(folder, manifest, shard)
    if dead is not None:
        keep &= ~dead
    if modality == "text":
        cap = caption_mask(folder, shard)
        if cap is not None:
            keep &= cap
    return np.flatnonzero(keep)


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
            arr = np.load(folder / s["files"][EMB_FILE[modality]], mmap_mode="r")
            out.append(np.asarray(arr[r[mine]], np.float32))
        start += len(r)
    return np.concatenate(out)


class _Files:
    """Writes files into a bias folder and keeps their records for the manifest."""

    def __init__(self, folder: Path, files: dict):
        self.folder, self.files = folder, files

    def save(self, path: Path, write) -> None:
        write(path)
        self.files[path.relative_to(self.folder).as_posix()] = file_record(path)


def _shard_offsets(folder: Path, shard: dict, modality: str, banks: dict, refs: dict, tau: float, nnn_k: int,
                   shifts: Optional[dict], where: str, out: _Files, augmented: bool) -> dict[str, np.ndarray]:
    """Offsets of one shard for ``modality`` (and its augmented indexes when ``shifts`` is given)."""
    emb = np.asarray(np.load(folder / shard["files"][EMB_FILE[modality]], mmap_mode="r"), np.float32)
    per = {"bsap": bsap_offsets(emb, banks[modality], tau), "nnn": nnn_bias(emb, refs[modality], k=nnn_k)}
    for method in METHODS:
        out.save(bias_path(folder, method, modality, shard["id"], where), lambda p: save_npy(p, per[method]))
    if augmented and shifts is not None:
        _save_augmented(folder, shard, modality, {m: (per[m], shifts[m][modality]) for m in METHODS}, where, out)
    return per


def compute_biases(folder: str | os.PathLike, clip=None, bank: str = "generic", bank_texts: Optional[Sequence[str]] = None,
                   bank_size: int = 64, nnn_k: int = 128, ref_size: int = 4096, tau: Optional[float] = None,
                   seed: int = 0, augmented: bool = True) -> dict:
    """(Re)compute the bias offsets of a complete index folder; returns the manifest's ``bias`` section.

    ``bank``: 'generic' (GENERIC_PROMPTS, needs ``clip``), 'texts' (``bank_texts``, needs ``clip``) or
    'corpus' (``bank_size`` sampled caption embeddings; no model needed). ``augmented`` also builds,
    for shards whose index is not Flat, the bias-augmented indexes used by exact BSAP/NNN search
    (Flat shards build theirs in memory on first use).
    """
    folder = Path(folder)
    for name, v in (("bank_size", bank_size), ("nnn_k", nnn_k), ("ref_size", ref_size)):
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    with write_lock(folder):
        m = load_manifest(folder)
        if m is None or not m.get("complete"):
            raise IndexFolderError(f"{folder} is not a complete index folder")
        shards = [s for s in m["shards"] if s["rows"] > 0]
        tau = float(tau if tau is not None else m["model"]["logit_scale"])
        t0 = time.perf_counter()
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
        where = bias_generation_dir(next_generation(m))
        shutil.rmtree(folder / where, ignore_errors=True)  # what a killed run of this generation left
        out = _Files(folder, {})
        shifts: dict[str, dict[str, float]] = {"bsap": {}, "nnn": {}}
        for modality in MODALITIES:
            out.save(bank_path(folder, modality, where), lambda p: save_npy(p, banks[modality].astype(np.float32)))
            out.save(reference_path(folder, modality, where), lambda p: save_npy(p, refs[modality].astype(np.float32)))
            per = [_shard_offsets(folder, s, modality, banks, refs, tau, nnn_k, None, where, out, False) for s in shards]
            for method in METHODS:  # the mean offset of the live, usable rows centres the augmented coordinate
                live = [p[method][usable_rows(folder, m, s, modality)] for p, s in zip(per, shards)]
                shifts[method][modality] = float(np.mean(np.concatenate(live), dtype=np.float64))
            if augmented:
                for s, p in zip(shards, per):
                    _save_augmented(folder, s, modality, {mt: (p[mt], shifts[mt][modality]) for mt in METHODS},
                                    where, out)
        section = {"tau": tau, "bank": bank, "bank_rows": {k: int(len(v)) for k, v in banks.items()},
                   "bank_texts": texts, "nnn_k": nnn_k,
                   "nnn_ref_rows": {k: int(len(v)) for k, v in refs.items()}, "seed": seed,
                   "shift": shifts, "augmented": bool(augmented), "dir": where, "files": out.files,
                   "seconds": round(time.perf_counter() - t0, 3)}
        m["bias"] = section
        publish(folder, m)
    return section


def save_shard_offsets(folder: str | os.PathLike, manifest: dict, shard: dict, offsets: dict) -> None:
    """Write a shard's given offsets ({(method, modality): array}) and augmented indexes beside the
    current generation's files, listed in ``manifest`` (its publish makes them current)."""
    folder, section = Path(folder), manifest["bias"]
    where = section["dir"]
    out = _Files(folder, section["files"])
    for (method, modality), arr in offsets.items():
        out.save(bias_path(folder, method, modality, shard["id"], where), lambda p: save_npy(p, np.asarray(arr, np.float32)))
    if section.get("augmented", True):
        for modality in MODALITIES:
            _save_augmented(folder, shard, modality, {m: (offsets[(m, modality)], section["shift"][m][modality])
                                                      for m in METHODS}, where, out)


def extend_biases(folder: str | os.PathLike, manifest: dict, shard: dict, generation: int) -> None:
    """The ``extend`` hook of a build: offsets of a new shard from the stored banks and references,
    written beside the current generation's and listed in ``manifest`` (the commit publishes them).
    A folder whose biases predate stored references is marked for a full recompute instead."""
    section = manifest.get("bias")
    if not section or shard["rows"] == 0:
        return
    folder, where = Path(folder), section.get("dir")
    if not where or not all(reference_path(folder, mod, where).exists() for mod in MODALITIES):
        section["stale"] = True
        return
    banks = {mod: np.load(bank_path(folder, mod, where)) for mod in MODALITIES}
    refs = {mod: np.load(reference_path(folder, mod, where)) for mod in MODALITIES}
    out = _Files(folder, section["files"])
    for modality in MODALITIES:
        _shard_offsets(folder, shard, modality, banks, refs, section["tau"], section["nnn_k"], section["shift"],
                       where, out, section.get("augmented", True))


def _save_augmented(folder: Path, shard: dict, modality: str, methods: dict[str, tuple[np.ndarray, float]],
                    where: str, out: _Files) -> None:
    """The augmented index of one non-Flat shard per method ({method: (offsets, shift)}); the shard's
    plain index and embeddings are read once for all methods. Flat shards have none stored."""
    import faiss

    from ..methods.augmented import build_augmented

    info = shard["index"][modality]
    if info["key"] == "Flat":
        return
    plain = faiss.read_index(str(folder / shard["files"][INDEX_FILE[modality]]))
    emb = np.load(folder / shard["files"][EMB_FILE[modality]], mmap_mode="r")
    for method, (offsets, shift) in methods.items():
        aug = build_augmented(plain, info["key"], emb, offsets, shift, seed=shard["id"])
        out.save(augmented_path(folder, method, modality, shard["id"], where), lambda p: save_faiss(p, aug))
