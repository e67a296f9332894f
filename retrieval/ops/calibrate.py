"""BSAP-H's λ per target modality from an index folder's own pairs (``methods.calibrate``), run by
``retrieval bias`` after the offsets are computed: a sample of live captioned rows queries the
whole corpus in both directions with the offsets as the indexes hold them."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..methods.calibrate import TopByLam, choose_lam, pair_hits, sample_pairs
from ..methods.rerank import bsap_from_offsets, hybrid_from_offsets
from ..store.masks import usable_rows
from ..store.vectors import ShardVectors, read_all

DEFAULT_CALIBRATION_PAIRS = 1000
log = logging.getLogger("retrieval.bias")


class _Pairs:
    """Image and caption vectors of global rows (zeros for a row without a usable caption), and the
    usable rows of each shard and modality (read once)."""

    def __init__(self, folder: Path, m: dict, shards: list[dict]):
        self.shards = shards
        self.starts = np.array([s["offset"] for s in shards], np.int64)
        self.usable = {mod: [usable_rows(folder, m, s, mod) for s in shards] for mod in ("image", "text")}
        self.captioned = [np.zeros(s["rows"], bool) for s in shards]
        for mask, t in zip(self.captioned, self.usable["text"]):
            mask[t] = True
        self.vectors = {mod: [ShardVectors(folder, s, mod) for s in shards] for mod in ("image", "text")}

    def captioned_rows(self) -> np.ndarray:
        """Global rows usable in both modalities: the folder's image-caption pairs."""
        # usable image rows that are captioned: a mask lookup (np.intersect1d re-sorted both: ~0.1 s per 200k)
        pairs = [i[cap[i]] + s["offset"] for s, cap, i in zip(self.shards, self.captioned, self.usable["image"])]
        return np.concatenate(pairs) if pairs else np.zeros(0, np.int64)

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        sh = np.searchsorted(self.starts, rows, side="right") - 1
        d = int(self.shards[0]["dim"]) if self.shards else 0
        img, cap = np.zeros((len(rows), d), np.float32), np.zeros((len(rows), d), np.float32)
        for k in np.unique(sh):
            pick = np.flatnonzero(sh == k)
            local = rows[pick] - self.starts[k]
            img[pick] = self.vectors["image"][k].rows(local)
            has = self.captioned[k][local]
            if has.any():
                cap[pick[has]] = self.vectors["text"][k].rows(local[has])
        return img, cap


def calibrate_lam(folder: Path, m: dict, shards: list[dict], offsets: dict, size: int = DEFAULT_CALIBRATION_PAIRS,
                  seed: int = 0, vectors: Optional[dict] = None) -> Optional[dict]:
    """{"lam": {target: λ}, "pairs": n, "r1": {target: R@1 per λ}} from ``size`` sampled live
    captioned pairs; ``offsets``: {shard id: {modality: {"bsap": [rows]}}} as quantized for the
    indexes; ``vectors``: {shard id: {modality: [rows, d]}} already read (else read here: from the
    npy, or decoded from the index). None when the folder has fewer than MIN_PAIRS pairs (or no captions)."""
    shards = [s for s in shards if "image" in s["index"] and "text" in s["index"]]
    pair_of = _Pairs(folder, m, shards)
    every = pair_of.captioned_rows()
    pick = sample_pairs(len(every), size, seed)
    if pick is None:
        return None
    rows = every[pick]
    q_img, q_txt = pair_of(rows)
    out: dict = {"pairs": int(len(rows)), "lam": {}, "r1": {}}
    for target, queries in (("image", q_txt), ("text", q_img)):
        top = TopByLam(queries)
        for s, live in zip(shards, pair_of.usable[target]):
            if len(live):
                vecs = (vectors or {}).get(s["id"], {}).get(target)
                vecs = read_all(folder, s, target) if vecs is None else vecs
                vecs = vecs if len(live) == len(vecs) else vecs[live]   # every row live: no copy
                top.add(vecs, offsets[s["id"]][target]["bsap"][live], live + s["offset"])
        lam, r1 = choose_lam(pair_hits(rows, top.rows, pair_of))
        out["lam"][target], out["r1"][target] = lam, r1
    log.info("BSAP-H λ from %d pairs: %s", len(rows), out["lam"])
    return out


FLOOR_QUANTILE = 0.99
FLOOR_SHIFTS = 8


def nonmatching_floors(folder: Path, m: dict, shards: list[dict], offsets: dict, lam: dict, tau: float,
                       alpha: float = 0.75, size: int = DEFAULT_CALIBRATION_PAIRS, seed: int = 0) -> Optional[dict]:
    """The score a non-matching pair reaches with probability 1 - FLOOR_QUANTILE, per query kind,
    target and method (``--min-score auto``): query row i against target row i + j (j = 1..8) of a
    sample of live rows, scored as the index scores (stored offsets, the recorded τ and λ, α). Caption
    queries need captioned pairs; image queries any live image. None when too few rows."""
    shards = [s for s in shards if "image" in s["index"]]
    pair_of = _Pairs(folder, m, shards)
    images = np.concatenate([i + s["offset"] for s, i in zip(shards, pair_of.usable["image"])] or
                            [np.zeros(0, np.int64)])
    out: dict = {"quantile": FLOOR_QUANTILE, "alpha": alpha, "lam": dict(lam), "floors": {}}
    for kinds, every in (((("text", "image"), ("image", "image"), ("image", "text"), ("text", "text")),
                          pair_of.captioned_rows()), ((("image", "image"),), images)):
        kinds = [k for k in kinds if f"{k[0]}->{k[1]}" not in out["floors"]]  # image->image: once
        pick = sample_pairs(len(every), size, seed) if kinds else None
        if pick is None:
            continue
        picked = every[pick]
        img, cap = pair_of(picked)
        vec = {"image": img, "text": cap}
        sh = np.searchsorted(pair_of.starts, picked, side="right") - 1
        local = picked - pair_of.starts[sh]
        for qm, tm in kinds:
            c = {meth: np.array([offsets[shards[k]["id"]][tm][meth][r] if tm in offsets[shards[k]["id"]] else 0.0
                                 for k, r in zip(sh, local)], np.float32) for meth in ("bsap", "nnn")}
            s, cb, cn = [], [], []
            for j in range(1, min(FLOOR_SHIFTS, len(picked) - 1) + 1):
                s.append((vec[qm] * np.roll(vec[tm], -j, axis=0)).sum(1))
                cb.append(np.roll(c["bsap"], -j))
                cn.append(np.roll(c["nnn"], -j))
            s, cb, cn = np.concatenate(s), np.concatenate(cb), np.concatenate(cn)
            lam_t = float(lam.get(tm, 0.0))
            scores = {"clip": s, "bsap": bsap_from_offsets(s, cb, tau), "hybrid": hybrid_from_offsets(s, cb, lam_t),
                      "nnn": s - alpha * cn}
            out["floors"][f"{qm}->{tm}"] = {meth: float(np.quantile(v, FLOOR_QUANTILE))
                                            for meth, v in scores.items()}
        out["pairs"] = max(out.get("pairs", 0), int(len(picked)))
    return out if out["floors"] else None
