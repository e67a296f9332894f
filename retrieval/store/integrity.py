"""File records and the checks against them: what detects a corrupt, truncated or swapped file.

Every file the manifest lists carries a record ``{"bytes", "sha256", "sample"}``:
- ``bytes``: the size; a truncated or extended file fails the cheap check;
- ``sample``: a blake2b fingerprint of the size and eight evenly spaced 4 KiB blocks (head and tail
  included), read in O(1) per file: a file swapped for another of the same size fails it;
- ``sha256``: the whole content, checked only by :func:`verify` (``retrieval verify``).
:func:`quick_check` (sizes + samples, O(files)) runs on every open; :func:`verify` reads every byte.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..embed.models import sha256_file

SAMPLE_BLOCK = 4096
SAMPLE_BLOCKS = 8


def fingerprint(path: str | os.PathLike) -> str:
    """blake2b-128 over the file size and ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BLOCK`` bytes."""
    size = os.path.getsize(path)
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCK * SAMPLE_BLOCKS:
            h.update(f.read())
        else:
            last = size - SAMPLE_BLOCK
            for i in range(SAMPLE_BLOCKS):
                f.seek(last * i // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BLOCK))
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """The manifest's record of a file just written."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path), "sample": fingerprint(path)}


def listed_files(manifest: dict) -> Iterator[tuple[str, dict]]:
    """(relative path, record) of every file the manifest lists, each once; records of folders written
    before records existed hold only what was known (``sha256`` of shard files, nothing for biases)."""
    seen: set[str] = set()
    for rel, rec in _listed(manifest):
        if rel not in seen:
            seen.add(rel)
            yield rel, rec


def _listed(manifest: dict) -> Iterator[tuple[str, dict]]:
    for s in manifest.get("shards", []):
        for role, rel in s["files"].items():
            rec = {k: s[k][role] for k in ("bytes", "sha256", "sample") if role in s.get(k, {})}
            if rec or (s["rows"] > 0 or not role.endswith("_index")):
                yield rel, rec
        yield from ((s.get("fts") or {}).get("files") or {}).items()
        yield from ((s.get("regions") or {}).get("files") or {}).items()
        for info in s.get("index", {}).values():   # the coarse quantizer its index file leaves out (store.coarse)
            if info.get("coarse"):
                yield info["coarse"]["file"], {k: v for k, v in info["coarse"].items() if k != "file"}
    for rel, rec in ((manifest.get("bias") or {}).get("files") or {}).items():
        yield rel, rec
    for entry in (manifest.get("tombstones") or {}).values():
        yield entry["file"], {k: entry[k] for k in ("bytes", "sha256", "sample") if k in entry}
    if manifest.get("held"):
        entry = manifest["held"]
        yield entry["file"], {k: entry[k] for k in ("bytes", "sha256", "sample") if k in entry}
    for entry in (manifest.get("trained") or {}).values():
        yield entry["file"], {k: entry[k] for k in ("bytes", "sha256", "sample") if k in entry}
    for entry in (manifest.get("merged") or {}).values():
        yield from entry["files"].items()


def check_file(folder: Path, rel: str, rec: dict) -> Optional[str]:
    """What is wrong with one file, cheaply (existence, size, sampled fingerprint), or None."""
    path = folder / rel
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})"
    if "bytes" in rec and size != rec["bytes"]:
        how = "truncated" if size < rec["bytes"] else "longer than written"
        return f"{how}: {size} bytes, the manifest says {rec['bytes']}"
    if "sample" in rec:
        try:
            if fingerprint(path) != rec["sample"]:
                return "content differs from the manifest (overwritten or swapped with another file)"
        except OSError as e:
            return f"unreadable ({e.strerror or type(e).__name__})"
    return None


def quick_check(folder: str | os.PathLike, manifest: dict) -> list[tuple[str, str]]:
    """(file, problem) for every listed file that fails the cheap check (O(files), not O(bytes))."""
    folder = Path(folder)
    return [(rel, why) for rel, rec in listed_files(manifest) if (why := check_file(folder, rel, rec))]


@dataclass
class Verification:
    """The result of :func:`verify`: problems per file, and how much was read how fast."""

    problems: list[tuple[str, str]]
    files: int
    bytes: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify_file(folder: Path, rel: str, rec: dict) -> tuple[Optional[str], int]:
    why = check_file(folder, rel, {k: v for k, v in rec.items() if k == "bytes"})
    if why is not None or "sha256" not in rec:
        return why, 0
    try:
        if sha256_file(folder / rel) != rec["sha256"]:
            return "content differs from the manifest (sha256 mismatch)", 0
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})", 0
    return None, os.path.getsize(folder / rel)


def verify(folder: str | os.PathLike, manifest: dict, threads: Optional[int] = None) -> Verification:
    """The full check: every listed file's size and sha256 (reads every byte; files hashed in parallel,
    hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    folder = Path(folder)
    t0 = time.perf_counter()
    files = list(listed_files(manifest))
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda item: _verify_file(folder, *item), files))
    problems = [(rel, why) for (rel, _), (why, _) in zip(files, results) if why is not None]
    problems += alignment(folder, manifest, {rel for rel, _ in problems})
    return Verification(problems, len(files), sum(n for _, n in results), time.perf_counter() - t0)


def alignment(folder: Path, manifest: dict, bad_files: set) -> list[tuple[str, str]]:
    """(file, problem) for rows the files and the manifest disagree on (shards whose files all
    passed the byte check), and for the manifest's own counts."""
    from .alignment import manifest_problems, shard_problems

    out = [("manifest.json", why) for why in manifest_problems(manifest)]
    dim = (manifest.get("model") or {}).get("embed_dim")
    for s in manifest.get("shards", []):
        if s["rows"] == 0 or bad_files & (set(s["files"].values()) | set((s.get("fts") or {}).get("files") or ())):
            continue
        out += shard_problems(folder, s, dim)
    return out


def require_intact(folder: str | os.PathLike, manifest: dict) -> None:
    """The full check; IndexFolderError naming the first bad file (and how many more there are)."""
    from ..errors import IndexFolderError

    check = verify(folder, manifest)
    if not check.ok:
        rel, why = check.problems[0]
        more = f" (and {len(check.problems) - 1} more file(s))" if len(check.problems) > 1 else ""
        raise IndexFolderError(f"{Path(folder) / rel}: {why}{more}")
