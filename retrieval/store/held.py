"""Keys the user deleted, held out of the folder until restored: a sync does not bring them back.

``retrieval delete`` (and the HTTP delete routes) tombstone the rows of the keys and add the keys to
the folder's held list, ``tombstones/held_gNNNNNN.parquet`` (one ``key`` column, sorted), published
with the same manifest write (the manifest's ``held`` section records it like any file). A build re-run
over a corpus that still holds the file skips a held key (``plan.plan_run``), so a takedown stays
down. ``retrieval delete --restore KEY`` releases the hold and makes the key's newest row live again
when compaction has not reclaimed it (else the next sync re-embeds it); ``add_embeddings`` of a
held key is an explicit re-add and releases it too. Keys that left the corpus and were tombstoned by
a sync are not held: they come back if their files do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import IndexFolderError
from .files import save_parquet
from .generations import next_generation, publish
from .integrity import file_record
from .layout import held_file
from .lock import write_lock
from .manifest import require_manifest
from .masks import KeyLookup, apply_tombstones, clear_tombstones, find_keys


def held_keys(folder: str | os.PathLike, manifest: dict) -> set[str]:
    """The keys held out of ``folder`` (empty when none)."""
    import pyarrow.parquet as pq

    entry = manifest.get("held")
    if not entry:
        return set()
    return set(pq.read_table(Path(folder) / entry["file"], columns=["key"]).column("key").to_pylist())


def set_held(folder: str | os.PathLike, manifest: dict, keys: set[str], generation: int) -> None:
    """Make ``keys`` the held list in ``manifest`` (a new file under ``generation``; the caller publishes)."""
    import pyarrow as pa

    folder = Path(folder)
    if not keys:
        manifest.pop("held", None)
        return
    rel = held_file(generation)
    save_parquet(folder / rel, pa.table({"key": pa.array(sorted(keys), pa.string())}), pa.schema([("key", pa.string())]))
    manifest["held"] = {"file": rel, "count": len(keys), **file_record(folder / rel)}


@dataclass
class Restored:
    restored: list[str] = field(default_factory=list)    # released keys (live again, or at the next sync)
    revived: int = 0                                      # of them, rows made live again now
    not_held: list[str] = field(default_factory=list)


def delete_keys(folder: str | os.PathLike, keys: Iterable[str]) -> KeyLookup:
    """Tombstone the rows of ``keys`` and hold the keys (a sync does not re-add them); one manifest
    write. Returns what was found."""
    with write_lock(folder):
        m = require_manifest(folder)
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is incomplete; finish its build before deleting")
        found = find_keys(folder, m, keys)
        held = held_keys(folder, m)
        hold = set(found.found) | set(found.deleted)
        if len(found.ids) or not hold <= held:
            gen = next_generation(m)
            apply_tombstones(folder, m, found.ids, gen)
            set_held(folder, m, held | hold, gen)
            publish(folder, m)
    return found


def restore_keys(folder: str | os.PathLike, keys: Iterable[str]) -> Restored:
    """Release held ``keys``; each one's newest row is live again where it still exists (one publish)."""
    folder = Path(folder)
    keys = {str(k) for k in keys}
    with write_lock(folder):
        m = require_manifest(folder)
        held = held_keys(folder, m)
        out = Restored(sorted(keys & held), 0, sorted(keys - held))
        if out.restored:
            gen = next_generation(m)
            out.revived = clear_tombstones(folder, m, find_keys(folder, m, out.restored).dead.values(), gen)
            set_held(folder, m, held - keys, gen)
            publish(folder, m)
    return out
