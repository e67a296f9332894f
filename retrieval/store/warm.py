"""Page warming: a served folder's search files read into the page cache in the background.

Every shard file is memory-mapped, so a freshly started server reads its index from disk one page
fault at a time, each fault with the kernel's read-around. At 10M rows in 100 compressed shards a
query on cold pages took ~27 ms, of which ~20 ms were faults in the index files' lists, against
~9 ms warm; reading those 1.4 GB once, sequentially, took 2.4 s (docs/benchmarks.md, "Scale").
So ``open_index(warm=True)`` (what ``retrieval serve`` does) asks for the files a search reads, most
used first, while they fit in a fraction of the memory available: the index files and the coarse
quantizers, then the BSAP/NNN offsets, then the fp16 npy files that Flat shards scan and compressed
shards re-score from. Nothing is held in process memory: the pages stay the kernel's to evict.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from .integrity import listed_files

log = logging.getLogger("retrieval.warm")

WARM_FRACTION = 0.5      # of the memory available at open: what the warmed files may take
CHUNK = 1 << 20          # read size where the platform has no posix_fadvise
EMBEDDINGS = ("img_emb", "text_emb")


def warm_order(manifest: dict) -> list[tuple[str, int]]:
    """(relative path, bytes or -1 when unrecorded) of the files a search reads, each once
    (``integrity.listed_files``), most used first: index files and their coarse quantizers, then the
    offsets files, then the embedding npy."""
    tier: dict[str, int] = {}
    for s in manifest.get("shards", []):
        for role, rel in s.get("files", {}).items():
            if role.endswith("_index") or role in EMBEDDINGS:
                tier[rel] = 0 if role.endswith("_index") else 2
        for info in (s.get("index") or {}).values():
            if isinstance(info, dict) and info.get("coarse"):
                tier[info["coarse"]["file"]] = 0
    for rel in (manifest.get("bias") or {}).get("files") or {}:
        tier[rel] = 1
    listed = [(rel, int(rec.get("bytes", -1))) for rel, rec in listed_files(manifest) if rel in tier]
    return sorted(listed, key=lambda f: tier[f[0]])   # stable: the manifest's order within a tier


def warm_plan(files: Iterable[tuple[str, int]], budget: int) -> list[str]:
    """The files of ``files`` (in order, sizes in bytes) to warm within ``budget`` bytes: each in turn
    while it fits in what is left; one that does not fit is skipped, and smaller ones after it
    still go (pure)."""
    plan, left = [], int(budget)
    for rel, n in files:
        if 0 <= n <= left:
            plan.append(rel)
            left -= n
    return plan


def available_bytes() -> Optional[int]:
    """The memory the system can give without swapping (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def warm_files(folder: Path, manifest: dict, budget: Optional[int] = None, skip=frozenset()) -> list[str]:
    """Ask for the pages of the planned files (``warm_plan`` of ``warm_order``; ``budget`` defaults to
    WARM_FRACTION of ``available_bytes``). Linux: posix_fadvise
    WILLNEED (the kernel reads, no copy here); elsewhere the files are read through once. Returns the
    files asked for (one that cannot be opened is skipped and logged at debug). ``skip``: paths not
    to ask for (an earlier snapshot's, asked for when it opened)."""
    if budget is None:
        avail = available_bytes()
        if avail is None:
            return []
        budget = int(WARM_FRACTION * avail)
    files = []
    for rel, n in warm_order(manifest):
        if rel in skip:
            continue
        if n < 0:
            try:
                n = (folder / rel).stat().st_size
            except OSError:
                continue
        files.append((rel, n))
    done = []
    for rel in warm_plan(files, budget):
        try:
            _warm_one(folder / rel)
            done.append(rel)
        except OSError as e:   # a file gone with a newer generation: the search reports what matters
            log.debug("warming %s skipped: %s", rel, e)
    return done


def _warm_one(path: Path) -> None:
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
        return
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def warm_in_background(folder: Path, manifest: dict, previous: Optional[dict] = None) -> threading.Thread:
    """``warm_files`` in a daemon thread (logged at debug: files, bytes planned, seconds); a reload
    passes the ``previous`` manifest, whose files were asked for when it opened, and only the new
    files are (a delete or a new bias generation does not read every shard again)."""
    def run() -> None:
        t = time.perf_counter()
        try:
            skip = frozenset(rel for rel, _ in warm_order(previous)) if previous is not None else frozenset()
            plan = warm_files(Path(folder), manifest, skip=skip)
            log.debug("warmed %d files of %s in %.1f s", len(plan), folder, time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - a hint only: searches read the files anyway
            log.debug("warming %s failed: %s", folder, e)

    th = threading.Thread(target=run, name="page-warm", daemon=True)
    th.start()
    return th
