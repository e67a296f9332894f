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

import functools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import IndexFolderError
from ..methods.offsets import item_offsets, recorded_math, resolve_precision
from ..methods.rerank import DEFAULT_NNN_K, LAM_BY_TARGET
from ..store.files import save_npy
from .calibrate import DEFAULT_CALIBRATION_PAIRS, calibrate_lam, nonmatching_floors
from .merge import merge_again
from ..store.combined import offsets_columns, quantize_offsets
from ..store.generations import next_generation, publish
from ..store.integrity import file_record
from ..store.layout import (MODALITIES, bank_path, bias_generation_dir, bias_path, reference_path)
from ..store.lock import write_lock
from ..store.manifest import load_manifest
from ..store.masks import usable_rows
from ..store.offsets import index_with_offsets
from ..store.quantizer import train_shared
from ..store.vectors import ShardVectors, offsets_bounds, read_all

# Rows sampled for a corpus bank (and for the image bank of text targets). 64 rows made BSAP hurt on
# real CLIP geometry; 4,096 (all 4,000 ImageNet rows) lifted it by 10 points in both directions
# (docs/quality.md).
DEFAULT_BANK_SIZE = 4096
GENERIC_PROMPTS = (
    "a photo.", "an image.", "a picture of something.", "a photo of an object.", "a photo of a thing.",
    "an image of something.", "a close-up photo.", "a blurry photo.", "a photo of a scene.", "a snapshot.",
    "a photo of a person.", "a photo of an animal.", "a photo of a place.", "a drawing.", "a picture.",
    "a photo taken outdoors.",
)
METHODS = ("bsap", "nnn")
BANK_TAU_SCALE = 0.5   # the bank temperature as a fraction of the logit scale (docs/quality.md)
log = logging.getLogger("retrieval.bias")


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
            out.append(ShardVectors(folder, s, modality).rows(r[mine]))
        start += len(r)
    return np.concatenate(out)


def stored_bank(path: Path) -> np.ndarray:
    """A bias generation's bank or references (read-only; a generation's files never change once
    published, so repeated appends in one process read them once)."""
    st = path.stat()
    return _read_bank(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_bank(path: str, size: int, mtime_ns: int) -> np.ndarray:
    a = np.load(path)
    a.flags.writeable = False
    return a


def offsets_of(vectors: np.ndarray, bank: np.ndarray, refs: np.ndarray, tau: float, nnn_k: int,
               precision: str = "auto") -> dict:
    """{"bsap": [n], "nnn": [n]} of vectors [n, d] (``precision``: ``methods.offsets.item_offsets``)."""
    return item_offsets(vectors, bank, refs, tau, nnn_k, precision=precision)


def quantize(offsets: dict, shifts: dict) -> None:
    """Replace {modality: {method: [n]}} in place by the values the fp16 codes hold exactly
    (``store.combined.quantize_offsets``): stored offsets and index scores then agree exactly."""
    for modality, per in offsets.items():
        for method in METHODS:
            per[method] = quantize_offsets(per[method], shifts.get(method, {}).get(modality, 0.0))


class BiasFiles:
    """Writes files into a bias folder and keeps their records for the manifest."""

    def __init__(self, folder: Path, files: dict):
        self.folder, self.files = folder, files

    def save(self, path: Path, write) -> None:
        write(path)
        self.files[path.relative_to(self.folder).as_posix()] = file_record(path)


def save_offsets(folder: Path, shard: dict, offsets: dict, where: str, out: BiasFiles) -> None:
    for modality, per in offsets.items():
        for method in METHODS:
            out.save(bias_path(folder, method, modality, shard["id"], where), lambda p: save_npy(p, per[method]))


def compute_biases(folder: str | os.PathLike, clip=None, bank: str = "generic", bank_texts: Optional[Sequence[str]] = None,
                   bank_size: int = DEFAULT_BANK_SIZE, nnn_k: int = DEFAULT_NNN_K, ref_size: int = 4096, tau: Optional[float] = None,
                   seed: int = 0, calibrate: int = DEFAULT_CALIBRATION_PAIRS, precision: str = "auto") -> dict:
    """(Re)compute the bias offsets of a complete index folder; returns the manifest's ``bias`` section.

    ``bank``: 'generic' (GENERIC_PROMPTS, needs ``clip``), 'texts' (``bank_texts``, needs ``clip``) or
    'corpus' (``bank_size`` sampled caption embeddings; no model needed). The shards' combined indexes
    get the new offsets as their extra coordinates. ``precision``: the offsets' matmul math
    (``methods.offsets.item_offsets``: 'auto', 'fp32' or 'bf16'), recorded in the section.
    """
    folder = Path(folder)
    _check_sizes(bank_size=bank_size, nnn_k=nnn_k, ref_size=ref_size)
    resolve_precision(precision)
    with write_lock(folder):
        m = load_manifest(folder)
        if m is None or not m.get("complete"):
            raise IndexFolderError(f"{folder} is not a complete index folder")
        apply_biases(folder, m, clip, bank, bank_texts, bank_size, nnn_k, ref_size, tau, seed, calibrate, precision)
        publish(folder, m)
    return m["bias"]


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    if sizes.get("nnn_k", 0) > sizes.get("ref_size", 0):
        raise ValueError(f"nnn_k ({sizes['nnn_k']}) must be at most ref_size ({sizes['ref_size']}): NNN averages "
                         f"the top nnn_k of the reference similarities")


HOLD_BYTES = 1 << 30   # vectors read for the offsets and kept for the calibration, at most (the rest are read again)


def apply_biases(folder: Path, m: dict, clip=None, bank: str = "generic", bank_texts: Optional[Sequence[str]] = None,
                 bank_size: int = DEFAULT_BANK_SIZE, nnn_k: int = DEFAULT_NNN_K, ref_size: int = 4096, tau: Optional[float] = None,
                 seed: int = 0, calibrate: int = DEFAULT_CALIBRATION_PAIRS, precision: str = "auto") -> None:
    """Write a new generation of bias files and rewritten indexes for manifest ``m`` (whose shards'
    files are written) and set its ``bias`` section; the caller publishes ``m``. ``calibrate``: pairs
    sampled to choose BSAP-H's λ per target (``ops.calibrate``; 0: the defaults)."""
    shards = [s for s in m["shards"] if s["rows"] > 0]
    precision = resolve_precision(precision)
    tau = float(tau if tau is not None else BANK_TAU_SCALE * m["model"]["logit_scale"])
    t0 = time.perf_counter()
    texts, banks, refs = _banks(folder, m, shards, clip, bank, bank_texts, bank_size, ref_size, seed)
    fewest = min(len(r) for r in refs.values())
    if nnn_k > fewest:  # a small folder: fewer reference queries than k (recorded as used)
        log.warning("nnn_k %d is more than the %d reference queries this folder gives; using %d", nnn_k, fewest, fewest)
        nnn_k = max(1, fewest)
    gen = next_generation(m)
    where = bias_generation_dir(gen)
    shutil.rmtree(folder / where, ignore_errors=True)  # what a killed run of this generation left
    out = BiasFiles(folder, {})
    for modality in banks:
        out.save(bank_path(folder, modality, where), lambda p: save_npy(p, banks[modality].astype(np.float32)))
        out.save(reference_path(folder, modality, where), lambda p: save_npy(p, refs[modality].astype(np.float32)))
    per_shard, shifts, held, held_bytes = {}, {"bsap": {}, "nnn": {}}, {}, 0
    for s in shards:
        vecs = {mod: read_all(folder, s, mod) for mod in banks if mod in s["index"]}
        per_shard[s["id"]] = {mod: offsets_of(v, banks[mod], refs[mod], tau, nnn_k, precision)
                              for mod, v in vecs.items()}
        size = sum(v.nbytes for v in vecs.values())
        if held_bytes + size <= HOLD_BYTES:   # kept for the calibration (decoding a shard again costs ~0.3 s / 200k rows)
            held[s["id"]], held_bytes = vecs, held_bytes + size
    # recorded: what the bulk ran in (shards under BF16_MIN_ITEMS run fp32; so does bf16 where the
    # CPU's bf16 math mode does not round: offsets.recorded_math)
    ran = {recorded_math(s["rows"], precision) for s in shards if per_shard[s["id"]]}
    precision = "bf16" if "bf16" in ran else "fp32"
    for modality in banks:  # the mean offset of the live, usable rows centres the extra coordinates
        for method in METHODS:
            live = [per_shard[s["id"]][modality][method][usable_rows(folder, m, s, modality)]
                    for s in shards if modality in per_shard[s["id"]]]
            shifts[method][modality] = float(np.mean(np.concatenate(live), dtype=np.float64)) if live else 0.0
    t_index = time.perf_counter()
    for s in shards:
        quantize(per_shard[s["id"]], shifts)
    bounds = {mod: offsets_bounds(offsets_columns(per_shard[s["id"]][mod], {mt: shifts[mt][mod] for mt in METHODS},
                                                  s["rows"]) for s in shards if mod in per_shard[s["id"]])
              for mod in banks}   # one IVF-PQ offsets grid per modality: the shards' codecs stay equal
    train_shared(folder, m, seed, per_shard, shifts)  # a first build's deferred shards: one quantizer across them
    for s in shards:
        save_offsets(folder, s, per_shard[s["id"]], where, out)
        for modality, offsets in per_shard[s["id"]].items():
            index_with_offsets(folder, m, s, modality, offsets, shifts, gen, bounds[modality])
    t_index = time.perf_counter() - t_index
    cal = calibrate_lam(folder, m, shards, per_shard, calibrate, seed + 4, held) if calibrate and "text" in banks else None
    lam = cal["lam"] if cal else {t: LAM_BY_TARGET.get(t, LAM_BY_TARGET["image"]) for t in banks}
    floor = nonmatching_floors(folder, m, shards, per_shard, lam, tau, seed=seed + 5) if calibrate else None
    m.pop("bias_pending", None)
    m["bias"] = {**({"lam": cal["lam"], "calibration": cal} if cal else {}), **({"floor": floor} if floor else {}),
                 "tau": tau, "bank": bank, "bank_rows": {k: int(len(v)) for k, v in banks.items()},
                 "bank_texts": texts, "nnn_k": nnn_k, "nnn_ref_rows": {k: int(len(v)) for k, v in refs.items()},
                 "seed": seed, "shift": shifts, "offsets_bounds": bounds, "precision": precision, "dir": where,
                 "files": out.files,
                 "seconds": round(time.perf_counter() - t0, 3), "index_seconds": round(t_index, 3)}
    again = merge_again(folder, m)   # the rewritten shards' merged index, merged again (ops.merge)
    if again.merged or again.skipped:
        m["bias"]["merged_again"] = again.line()


def _banks(folder: Path, m: dict, shards: list[dict], clip, bank: str, bank_texts, bank_size: int, ref_size: int,
           seed: int):
    """(bank texts or None, BSAP banks by modality, NNN references by modality), for the modalities
    some shard indexes. Image targets: the text bank, and sampled captions as NNN references (the
    text bank itself when no row has a caption); text targets: sampled images for both."""
    indexed = [mod for mod in MODALITIES if any(mod in s["index"] for s in shards)]
    captions = "text" in indexed
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
        if not captions:
            raise ValueError(f"{folder} has no captions to sample bank 'corpus' from; use bank 'generic' or 'texts'")
        text_bank = _sample_rows(folder, m, shards, "text", bank_size, seed)
    else:
        raise ValueError(f"unknown bank {bank!r}; choose generic, texts or corpus")
    # where the BSAP bank and the NNN references are both samples of the same stored rows at the same
    # size, they are one sample: each method still sees a random sample of the corpus, and
    # ``item_offsets`` then multiplies the items by it once instead of twice
    banks = {"image": text_bank}
    same = bank == "corpus" and ref_size == bank_size
    refs = {"image": text_bank if same or not captions else _sample_rows(folder, m, shards, "text", ref_size, seed + 2)}
    if captions:
        banks["text"] = _sample_rows(folder, m, shards, "image", bank_size, seed + 1)
        refs["text"] = (banks["text"] if ref_size == bank_size
                        else _sample_rows(folder, m, shards, "image", ref_size, seed + 3))
    return texts, banks, refs


class BiasExtension:
    """The writer's ``Extension``: appended shards get offsets from the stored banks and references;
    a folder without banks gets them (``bank``: 'generic' | 'texts' | 'corpus'; None: no biases) in the
    generation after the one that makes it searchable (``later``: not in this run; the folder records
    them as pending, and a rerun of the build or ``retrieval bias`` adds them)."""

    def __init__(self, folder: str | os.PathLike, clip=None, bank: Optional[str] = None,
                 bank_texts: Optional[Sequence[str]] = None, later: bool = False):
        self.folder, self.clip, self.bank, self.bank_texts = Path(folder), clip, bank, bank_texts
        self.later = later

    def defers(self, manifest: dict) -> bool:
        """A first build that will compute banks defers its shards' indexes until they are all written
        (one quantizer trained across them); a complete folder indexes new shards at once."""
        return self.bank is not None and not manifest.get("bias") and not manifest.get("complete")

    def _wanted(self, manifest: dict) -> bool:
        if self.bank is None or manifest.get("bias") or not any(s["rows"] for s in manifest["shards"]):
            return False
        if self.bank == "corpus" and not any("text" in s["index"] for s in manifest["shards"]):
            log.warning("%s has no captions to sample a 'corpus' bank from: no bias offsets (BSAP/NNN); "
                        "add them with `retrieval bias %s --bank generic`", self.folder, self.folder)
            return False
        return True

    def announce(self, manifest: dict) -> None:
        if self._wanted(manifest):
            manifest["bias_pending"] = {"bank": self.bank, **({"bank_texts": list(self.bank_texts)}
                                                             if self.bank_texts else {})}

    def finish(self, manifest: dict) -> bool:
        if self.later or not self._wanted(manifest):
            return False
        apply_biases(self.folder, manifest, self.clip, self.bank, self.bank_texts)
        return True

    def offsets(self, manifest: dict, vectors: dict) -> Optional[dict]:
        section = manifest.get("bias")
        if not section:
            return None
        where = section.get("dir")
        have = [mod for mod in vectors if where and reference_path(self.folder, mod, where).exists()]
        if len(have) < len(vectors):
            # biases from before stored references, or the first captions of an image-only folder:
            # recomputed after the run
            section["stale"] = True
            return None
        out = {}
        for mod in have:
            bank, refs = bank_path(self.folder, mod, where), reference_path(self.folder, mod, where)
            records = section.get("files") or {}
            same = [records.get(p.relative_to(self.folder).as_posix(), {}).get("sha256") for p in (bank, refs)]
            bank_rows = stored_bank(bank)   # one sample as both (equal hashes): one array, one matmul
            out[mod] = offsets_of(vectors[mod], bank_rows, bank_rows if same[0] and same[0] == same[1] else
                                  stored_bank(refs), section["tau"], section["nnn_k"],
                                  section.get("precision", "fp32"))   # the generation's own math
        quantize(out, section.get("shift") or {})
        return out

    def save(self, manifest: dict, entry: dict, offsets: dict) -> None:
        section = manifest["bias"]
        save_offsets(self.folder, entry, {mod: offsets[mod] for mod in offsets}, section["dir"],
                      BiasFiles(self.folder, section["files"]))


def save_shard_offsets(folder: str | os.PathLike, manifest: dict, shard: dict, offsets: dict) -> None:
    """Write given offsets ({modality: {method: [n]}}) of a shard beside the current generation's files."""
    section = manifest["bias"]
    save_offsets(Path(folder), shard, offsets, section["dir"], BiasFiles(Path(folder), section["files"]))
