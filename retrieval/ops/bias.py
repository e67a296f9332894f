"""Compute and store the per-item offsets for exact whole-corpus BSAP and NNN search (DESIGN §4).

For each shard and target modality (``image``: text->image search; ``text``: image->text search):
- ``bias/bsap_{modality}_{k}.npy``: c_j = LSE_m(τ s(j, a_m)) / τ over the auxiliary bank a;
- ``bias/nnn_{modality}_{k}.npy``: mean of the ``nnn_k`` largest s(r, j) over reference queries r
  (α is applied at query time, so changing α needs no recomputation).
Banks (our choice, recorded in the manifest): image targets use text prompts (the generic list below,
user texts, or a seeded sample of the corpus's caption embeddings) and caption embeddings as NNN
references; text targets use seeded samples of the corpus's image embeddings. The banks are saved
as ``bank_*.npy``. Recomputing (``compute_biases``) reads stored embeddings only.

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
from ..store.generations import next_generation, publish
from ..store.integrity import file_record
from ..store.layout import (EMB_FILE, INDEX_FILE, MODALITIES, augmented_path, bank_path, bias_generation_dir,
                            bias_path)
from ..store.lock import write_lock
from ..store.manifest import load_manifest
from ..store.writer import save_faiss, save_npy

GENERIC_PROMPTS = (
    "a photo.", "an image.", "a picture of something.", "a photo of an object.", "a photo of a thing.",
    "an image of something.", "a close-up photo.", "a blurry photo.", "a photo of a scene.", "a snapshot.",
    "a photo of a person.", "a photo of an animal.", "a photo of a place.", "a drawing.", "a picture.",
    "a photo taken outdoors.",
)


def _sample_rows(folder: Path, shards: list[dict], modality: str, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of stored embeddings of ``modality`` across shards (float32)."""
    total = sum(s["rows"] for s in shards)
    ids = np.sort(np.random.default_rng(seed).choice(total, min(size, total), replace=False))
    out, start = [], 0
    for s in shards:
        mine = ids[(ids >= start) & (ids < start + s["rows"])] - start
        if len(mine):
            arr = np.load(folder / s["files"][EMB_FILE[modality]], mmap_mode="r")
            out.append(np.asarray(arr[mine], np.float32))
        start += s["rows"]
    return np.concatenate(out)


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
            text_bank = _sample_rows(folder, shards, "text", bank_size, seed)
        else:
            raise ValueError(f"unknown bank {bank!r}; choose generic, texts or corpus")
        banks = {"image": text_bank, "text": _sample_rows(folder, shards, "image", bank_size, seed + 1)}
        refs = {"image": _sample_rows(folder, shards, "text", ref_size, seed + 2),
                "text": _sample_rows(folder, shards, "image", ref_size, seed + 3)}
        where = bias_generation_dir(next_generation(m))
        shutil.rmtree(folder / where, ignore_errors=True)  # what a killed run of this generation left
        files: dict[str, dict] = {}

        def save(path: Path, write) -> None:
            write(path)
            files[path.relative_to(folder).as_posix()] = file_record(path)

        shifts: dict[str, dict[str, float]] = {"bsap": {}, "nnn": {}}
        for modality in MODALITIES:
            save(bank_path(folder, modality, where), lambda p: save_npy(p, banks[modality].astype(np.float32)))
            per: dict[str, list] = {"bsap": [], "nnn": []}
            for s in shards:
                emb = np.asarray(np.load(folder / s["files"][EMB_FILE[modality]], mmap_mode="r"), np.float32)
                per["bsap"].append(bsap_offsets(emb, banks[modality], tau))
                per["nnn"].append(nnn_bias(emb, refs[modality], k=nnn_k))
                for method in per:
                    save(bias_path(folder, method, modality, s["id"], where), lambda p: save_npy(p, per[method][-1]))
            for method, offs in per.items():
                shifts[method][modality] = float(np.mean(np.concatenate(offs), dtype=np.float64))
            if augmented:
                for i, s in enumerate(shards):
                    for method, index in _augmented(folder, s, modality,
                                                    {mt: (per[mt][i], shifts[mt][modality]) for mt in per}):
                        save(augmented_path(folder, method, modality, s["id"], where),
                             lambda p: save_faiss(p, index))
        section = {"tau": tau, "bank": bank, "bank_rows": {k: int(len(v)) for k, v in banks.items()},
                   "bank_texts": texts, "nnn_k": nnn_k,
                   "nnn_ref_rows": {k: int(len(v)) for k, v in refs.items()}, "seed": seed,
                   "shift": shifts, "augmented": bool(augmented), "dir": where, "files": files,
                   "seconds": round(time.perf_counter() - t0, 3)}
        m["bias"] = section
        publish(folder, m)
    return section


def _augmented(folder: Path, shard: dict, modality: str, methods: dict[str, tuple[np.ndarray, float]]):
    """(method, augmented index) of one non-Flat shard per method ({method: (offsets, shift)}); the
    shard's plain index and embeddings are read once for all methods. Flat shards have none stored."""
    import faiss

    from ..methods.augmented import build_augmented

    info = shard["index"][modality]
    if info["key"] == "Flat":
        return
    plain = faiss.read_index(str(folder / shard["files"][INDEX_FILE[modality]]))
    emb = np.load(folder / shard["files"][EMB_FILE[modality]], mmap_mode="r")
    for method, (offsets, shift) in methods.items():
        yield method, build_augmented(plain, info["key"], emb, offsets, shift, seed=shard["id"])
