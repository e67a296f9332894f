"""``retrieval migrate``: rewrite an index folder of format 1 or 2 as format 3, without re-embedding.

Format 2 kept every vector twice (fp16 npy and an IVF-Flat/HNSW-Flat fp32 index) and, with biases,
two bias-augmented indexes per shard and modality. Format 3 keeps one combined index per shard and
modality (``store.combined``) whose ``SQfp16`` codes are the only copy of the vectors (``store.vectors``).

Per shard and modality: an IVF index keeps its coarse centroids (padded with zeros for the offsets
coordinates: no k-means, the same lists, so its tuned nprobe still holds); HNSW and lossy indexes are
rebuilt from the npy; the bias offsets already stored become the extra coordinates. Everything new is
written under generation-named files and published by one manifest write: a killed migration leaves
the folder as it was, and a rerun starts over. The superseded files are retired like any other
generation's (deleted at the next publish).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.combined import combine_vectors, combined_layout
from ..store.faiss_index import build_faiss_index
from ..store.files import save_faiss
from ..store.generations import next_generation, publish
from ..store.integrity import file_record
from ..store.files import save_npy
from ..store.layout import (EMB_FILE, INDEX_FILE, MODALITIES, bank_path, bias_dir, bias_generation_dir, bias_path,
                            index_file, reference_path, trained_file)
from ..store.lock import write_lock
from ..store.manifest import FORMAT_VERSION, load_manifest
from ..store.vectors import built_key, keeps_npy
from ..store.masks import usable_rows
from .bias import METHODS, BiasFiles, save_offsets, quantize

log = logging.getLogger("retrieval.migrate")


@dataclass
class MigrationReport:
    from_format: int
    to_format: int
    shards: int = 0
    indexes: int = 0
    centroids_reused: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        if self.from_format == self.to_format:
            return f"already format {self.to_format}: nothing to do"
        return (f"format {self.from_format} -> {self.to_format}: {self.shards} shard(s), {self.indexes} index(es) "
                f"rewritten ({self.centroids_reused} kept their IVF centroids), "
                f"{self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB in {self.seconds:.1f} s")


def _folder_bytes(m: dict) -> int:
    total = sum(sum(s.get("bytes", {}).values()) for s in m["shards"])
    section = m.get("bias") or {}
    return total + sum(r.get("bytes", 0) for r in (section.get("files") or {}).values())


def _old_offsets(folder: Path, m: dict, shard: dict, modality: str) -> Optional[dict]:
    section = m.get("bias")
    if not section:
        return None
    out = {}
    for method in METHODS:
        path = bias_path(folder, method, modality, shard["id"], bias_dir(section))
        if not path.exists():
            raise IndexFolderError(f"{path} is missing; run `retrieval verify {folder}`")
        out[method] = np.load(path)
    return out


def _shifts(folder: Path, m: dict, offsets: dict) -> dict:
    """The mean offset over live, usable rows per method and modality (what centres the coordinates)."""
    shifts: dict = {method: {} for method in METHODS}
    for method in METHODS:
        for modality in MODALITIES:
            live = [per[modality][method][usable_rows(folder, m, s, modality)]
                    for s in m["shards"] if (per := offsets.get(s["id"])) and per.get(modality)]
            shifts[method][modality] = float(np.mean(np.concatenate(live), dtype=np.float64)) if live else 0.0
    return shifts


def _from_centroids(old, fkey: str, dim: int):
    """An empty trained combined index of ``fkey`` whose coarse quantiser holds ``old``'s centroids
    padded with zeros, or None when ``old`` is not a plain IVF or the new key is not an SQfp16 IVF."""
    import faiss

    old_ivf = faiss.downcast_index(old)
    new = faiss.index_factory(dim, fkey, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(new)
    if (not isinstance(old_ivf, faiss.IndexIVF) or not isinstance(ivf, faiss.IndexIVFScalarQuantizer)
            or old_ivf.nlist != ivf.nlist or ivf.sq.qtype != faiss.ScalarQuantizer.QT_fp16):
        return None
    centroids = old_ivf.quantizer.reconstruct_n(0, old_ivf.nlist)
    padded = np.zeros((old_ivf.nlist, dim), np.float32)
    padded[:, :centroids.shape[1]] = centroids
    ivf.by_residual = False
    ivf.quantizer.add(padded)
    ivf.is_trained = True
    return new


def migrate(folder: str | os.PathLike) -> MigrationReport:
    """Rewrite ``folder`` as the current format (see the module doc); returns what was done."""
    import faiss

    from ..store.shard import build_combined

    folder = Path(folder)
    t0 = time.perf_counter()
    with write_lock(folder):
        m = load_manifest(folder, allow_old=True)
        if m is None:
            raise IndexFolderError(f"{folder} is not an index folder (no manifest.json)", usage=True)
        report = MigrationReport(int(m.get("format_version", 1)), FORMAT_VERSION)
        if report.from_format >= FORMAT_VERSION:
            return report
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is an unfinished build of format {report.from_format}: finish it "
                                   f"with the version that started it, or rebuild it")
        report.bytes_before = _folder_bytes(m)
        gen = next_generation(m)
        d = int(m["model"]["embed_dim"])
        shards = [s for s in m["shards"] if s["rows"] > 0]
        offsets = {s["id"]: {mod: _old_offsets(folder, m, s, mod) for mod in s["index"]} for s in shards}
        if m.get("bias"):
            _new_bias_generation(folder, m, shards, offsets, gen)
        shifts = (m.get("bias") or {}).get("shift") or {}
        old_trained = m.pop("trained", None) or {}
        _convert_trained(folder, m, old_trained, d, gen)
        settings = {"recall_target": m["build"].get("recall_target", 0.95)}
        for s in shards:
            s["dim"] = d
            for mod, info in s["index"].items():
                requested = info.get("requested", info["key"])
                key = built_key(requested)
                new = {"key": key, "requested": requested, "params": info.get("params", ""), "ntotal": s["rows"],
                       "dim": d, "trained_reused": bool(info.get("trained_reused"))}
                old_rel = s["files"].pop(INDEX_FILE[mod], None)
                if key != "Flat":
                    vecs = np.load(folder / s["files"][EMB_FILE[mod]], mmap_mode="r")
                    fkey, dim = combined_layout(key, d)
                    base = None if old_rel is None else _from_centroids(faiss.read_index(str(folder / old_rel)), fkey, dim)
                    per = offsets[s["id"]][mod]
                    if base is not None:
                        x = combine_vectors(vecs, per, {k: shifts[k][mod] for k in METHODS} if per else None, dim)
                        index = build_faiss_index(x, fkey, trained=base)
                        report.centroids_reused += 1
                    else:
                        usable = np.arange(s["rows"]) if mod == "image" else usable_rows(folder, m, s, mod)
                        index, new["params"], new["trained_reused"] = build_combined(
                            folder, m, mod, key, np.asarray(vecs), usable, per, settings, seed=s["id"])
                    if new["params"]:
                        faiss.ParameterSpace().set_index_parameters(index, new["params"])
                    s["files"][INDEX_FILE[mod]] = index_file(s["id"], mod, gen)
                    save_faiss(folder / s["files"][INDEX_FILE[mod]], index)
                    new["dim"] = int(index.d)
                    report.indexes += 1
                if not keeps_npy(key):
                    s["files"].pop(EMB_FILE[mod], None)
                s["index"][mod] = new
            _records(folder, s)
            report.shards += 1
        m["format_version"] = FORMAT_VERSION
        report.bytes_after = _folder_bytes(m)
        publish(folder, m)
    report.seconds = time.perf_counter() - t0
    return report


def _new_bias_generation(folder: Path, m: dict, shards: list[dict], offsets: dict, gen: int) -> None:
    """The bias files in a new generation folder: the banks and references copied, the offsets
    centred and quantized to what the fp16 codes hold (``store.combined.quantize_offsets``)."""
    section = m["bias"]
    old_where, where = bias_dir(section), bias_generation_dir(gen)
    shutil.rmtree(folder / where, ignore_errors=True)  # what a killed run of this generation left
    out = BiasFiles(folder, {})
    for mod in MODALITIES:
        for src, dst in ((bank_path(folder, mod, old_where), bank_path(folder, mod, where)),
                         (reference_path(folder, mod, old_where), reference_path(folder, mod, where))):
            if src.exists():
                out.save(dst, lambda p, src=src: save_npy(p, np.load(src)))
    section["shift"] = _shifts(folder, m, offsets)
    for s in shards:
        per = {mod: o for mod, o in offsets[s["id"]].items() if o is not None}
        quantize(per, section["shift"])
        save_offsets(folder, s, per, where, out)
    section.pop("augmented", None)
    section["dir"], section["files"] = where, out.files


def _convert_trained(folder: Path, m: dict, old_trained: dict, d: int, gen: int) -> None:
    """Carry each kept empty IVF quantizer over to the combined layout (appends keep reusing it)."""
    import faiss

    for mod, entry in old_trained.items():
        key = built_key(entry["key"])
        fkey, dim = combined_layout(key, d)
        base = _from_centroids(faiss.read_index(str(folder / entry["file"])), fkey, dim)
        if base is None:
            continue  # not an IVF: the first shard rebuilt keeps a new one
        rel = trained_file(mod, gen)
        save_faiss(folder / rel, base)
        m.setdefault("trained", {})[mod] = {"key": fkey, "dim": dim, "file": rel, "params": entry.get("params"),
                                            **file_record(folder / rel)}


def _records(folder: Path, shard: dict) -> None:
    records = {name: file_record(folder / rel) for name, rel in shard["files"].items()}
    for field in ("sha256", "bytes", "sample"):
        shard[field] = {name: r[field] for name, r in records.items()}
