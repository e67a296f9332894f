"""Multi-file changes as generations: write new files under new names, publish them with the one
manifest write, then collect what the switch made unreachable (DESIGN §10).

A reader only ever follows a manifest, so it sees the old set of files or the new set, never a mix;
kill -9 at any point leaves one of the two. Files that a publish stops referencing are *retired*:
listed in the new manifest and deleted at the next publish, so a reader that opened the previous
generation just before a switch can still load its files for one more generation. Files retired from
a generation no reader opens (an incomplete one: a first build in progress; or one of an older
format, which readers refuse) are deleted at once: a first build does not hold two copies of what its
last step rewrites, and a migration frees the old format's space. Anything else in
the managed folders that no manifest knows (what a killed writer left) is swept at each publish.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .integrity import listed_files
from .layout import BIAS_DIR, FTS_DIR, REGIONS_DIR, TOMBSTONE_DIR, legacy_bias_files
from .manifest import MIN_FORMAT, load_manifest, save_manifest

# folders whose entries no manifest references are garbage (a killed writer's files); swept only by a
# publish, which runs under the writer lock after every file it publishes is written
MANAGED = ("img_emb", "text_emb", "metadata", "faiss", "captions", BIAS_DIR, TOMBSTONE_DIR, FTS_DIR, REGIONS_DIR)


def referenced(manifest: dict) -> set[str]:
    """Relative paths of every file ``manifest`` needs."""
    out = {rel for rel, _ in listed_files(manifest)}
    out |= set(legacy_bias_files(manifest))
    return out


def next_generation(manifest: dict) -> int:
    return int(manifest.get("generation", 0)) + 1


def publish(folder: str | os.PathLike, manifest: dict) -> None:
    """Make ``manifest`` the folder's state (one atomic write), then collect garbage."""
    folder = Path(folder)
    previous = load_manifest(folder, allow_old=True) or {}
    manifest["generation"] = max(next_generation(previous), int(manifest.get("generation", 0)))
    now = referenced(manifest)
    gone = referenced(previous) - now
    readable = bool(previous.get("complete")) and previous.get("format_version", 0) >= MIN_FORMAT
    manifest["retired"] = sorted(gone) if readable else []
    save_manifest(folder, manifest)
    for rel in previous.get("retired", []) + ([] if readable else sorted(gone)):
        if rel not in now:
            _remove(folder / rel)
    keep = now | set(manifest["retired"])
    for managed in MANAGED:
        _sweep(folder, folder / managed, keep)
        if (folder / managed).is_dir() and not any((folder / managed).iterdir()):
            (folder / managed).rmdir()  # e.g. img_emb/ once every shard's vectors live in its index


def _sweep(folder: Path, root: Path, keep: set[str]) -> None:
    """Remove what under ``root`` holds no kept file (empty generation folders, orphans)."""
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        rel = p.relative_to(folder).as_posix()
        if p.is_dir():
            if not any(k.startswith(rel + "/") for k in keep):
                shutil.rmtree(p, ignore_errors=True)
            else:
                _sweep(folder, p, keep)
        elif rel not in keep:
            _remove(p)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
