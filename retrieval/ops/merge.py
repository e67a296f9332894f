"""``merge``: one on-disk index per modality from its IVF shards, for indexes larger than RAM.

The shards of a modality share one trained quantizer (``store.quantizer``), so their inverted lists
can be concatenated: each shard is memory-mapped and its trained layout (the index with empty lists)
checked against the first's, then faiss's ``OnDiskInvertedLists.merge_from_multiple`` writes every
list of the memory-mapped shards into one ``.ivfdata`` file next to the merged index, and the ids are
shifted in place to global ids (shard offset + row). ``open_index`` memory-maps that file (the page
cache holds the lists, not the process) and searches the merged index in place of those shards with
the same selection, offsets and results. The shards' own files stay (exact scans, vectors, appends):
a merge costs its size again on disk.

The merged index covers the shard files it was made from. The operations that rewrite them
(``compact``, a bias recompute) merge it again into the manifest they publish (``merge_again``), so a
merged folder stays merged and kill -9 leaves the old pair or the new one; a merge made stale any
other way is ignored by searches (with a warning) until ``merge`` is rerun. Shards appended after a
merge are searched beside it until the next compact or bias recompute, which merges them in too
(a compact does so even when it has no shard to rewrite). One manifest write publishes the merge; a
failed merge removes the files it wrote.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.coarse import CoarseCache, centroids, read_index
from ..store.files import quiet_stdout
from ..store.generations import next_generation, publish
from ..store.integrity import file_record
from ..store.layout import INDEX_FILE, MODALITIES, merge_is_stale, merged_files
from ..store.lock import write_lock
from ..store.manifest import require_manifest


@dataclass
class MergeReport:
    merged: dict = field(default_factory=dict)     # modality -> (shards, vectors, bytes)
    skipped: dict = field(default_factory=dict)    # modality -> why
    seconds: float = 0.0

    def line(self) -> str:
        done = [f"{mod}: {n} shards, {v} vectors, {b / 2**20:.1f} MiB" for mod, (n, v, b) in self.merged.items()]
        why = [f"{mod} not merged ({r})" for mod, r in self.skipped.items()]
        return "; ".join(done + why) + f" in {self.seconds:.1f} s"


def _layout(index) -> bytes:
    """The serialized trained-but-empty form of ``index`` (memory-mapped lists left unread): equal
    for shards sharing a quantizer and codec. Its lists are swapped for empty ones while it is
    serialized (faiss cannot clone memory-mapped lists), then put back."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists, own, n = ivf.invlists, ivf.own_invlists, index.ntotal
    ivf.own_invlists = False   # replace_invlists would free the mapped lists otherwise
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()        # the index frees it
    index.ntotal = ivf.ntotal = 0
    try:
        return faiss.serialize_index(index).tobytes()
    finally:
        ivf.replace_invlists(lists, own)   # frees the empty lists (owned), the mapped ones back as they were
        index.ntotal = ivf.ntotal = n


def _mismatch(first, other, first_id: int, other_id: int, modality: str) -> str:
    """Why shard ``other_id``'s index cannot be merged with shard ``first_id``'s: their coarse centroids
    differ (rebuild), or only their codecs do (IVF-PQ offsets coded per shard: recompute the bias)."""
    import faiss

    a, b = (centroids(faiss.extract_index_ivf(ix)) for ix in (first, other))
    if a.shape != b.shape or not np.array_equal(a, b):
        return (f"shard {other_id} was not built on the same trained quantizer as shard {first_id} (a folder "
                f"written before its shards shared one, or a key trained per shard): merging needs IVF shards "
                f"on one quantizer and codec (Flat, SQfp16, the budget's IVF-PQ); rebuild with such a key to "
                f"merge its {modality} shards")
    return (f"shard {other_id}'s {modality} codec differs from shard {first_id}'s (IVF-PQ offsets coded on "
            f"per-shard grids by an older version: `retrieval bias` codes them on one grid; or a key trained "
            f"per shard): merging needs IVF shards on one quantizer and codec; these are searched shard by shard")


def _merge_lists(trained, ivfs: list, starts: list[int], path: Path) -> int:
    """Write the inverted lists of IVF indexes ``ivfs`` (memory-mapped shards of ``trained``'s layout)
    into one on-disk file ``path`` (faiss ``OnDiskInvertedLists.merge_from_multiple``), their local row
    ids shifted to global ids (shard ``i``'s by ``starts[i]``); attach it to the empty ``trained`` index.
    Returns the vectors merged. No copy of the shards is written: the disk holds the merge once."""
    import faiss

    out = faiss.extract_index_ivf(trained)
    lists = faiss.OnDiskInvertedLists(out.nlist, out.code_size, str(path))
    vec = faiss.InvertedListsPtrVector()
    for ivf in ivfs:
        vec.push_back(ivf.invlists)
    with quiet_stdout():
        ntotal = int(lists.merge_from_multiple(vec.data(), vec.size(), False))
    # list j holds shard 0's entries of j, then shard 1's, ...: each run shifted by its shard's first id
    sizes = np.array([[ivf.invlists.list_size(j) for j in range(out.nlist)] for ivf in ivfs], np.int64)
    first = np.asarray(starts, np.int64)
    for j in np.flatnonzero(sizes.sum(0)):
        ids = faiss.rev_swig_ptr(lists.get_ids(int(j)), int(sizes[:, j].sum()))
        ids += np.repeat(first, sizes[:, j])
    trained.ntotal = out.ntotal = ntotal
    out.replace_invlists(lists, True)
    lists.this.disown()
    with open(path, "rb+") as f:   # the ids were shifted through faiss's shared mapping of the file
        os.fsync(f.fileno())
    return ntotal


def eligible(manifest: dict, modality: str) -> tuple[list[dict], Optional[str]]:
    """(the shards to merge, None) or ([], why not)."""
    shards = [s for s in manifest["shards"] if s["rows"] > 0 and modality in s["index"]]
    if not shards:
        return [], "no shard has this modality"
    if any(INDEX_FILE[modality] not in s["files"] or s["index"][modality].get("pending") for s in shards):
        return [], "some shards are Flat or not indexed yet (merge needs IVF shards)"
    if any("IVF" not in s["index"][modality]["key"] for s in shards):
        return [], "some shards are not IVF"
    if len(shards) < 2:
        return [], "a single shard is already one index"
    return shards, None


def _merge_modality(folder: Path, manifest: dict, modality: str, shards: list[dict], generation: int) -> tuple:
    import faiss

    rel_index, rel_data = merged_files(modality, generation)
    held, ref, coarse, done = [], None, CoarseCache(folder), False
    try:
        for s in shards:
            rel, info = s["files"][INDEX_FILE[modality]], s["index"][modality]
            held.append(read_index(folder, rel, info, faiss.IO_FLAG_MMAP, cache=coarse))   # lists mapped, not read
            layout = _layout(held[-1])
            if ref is None:
                ref, trained = layout, faiss.deserialize_index(np.frombuffer(layout, np.uint8))
            elif layout != ref:
                raise IndexFolderError(_mismatch(held[0], held[-1], shards[0]["id"], s["id"], modality))
        _merge_lists(trained, [faiss.extract_index_ivf(ix) for ix in held], [int(s["offset"]) for s in shards],
                     folder / rel_data)
        faiss.write_index(trained, str(folder / rel_index))  # a new generation's name: unseen until published
        done = True
    finally:
        held.clear()   # the shards' mappings, released
        if not done:   # a failed merge leaves nothing
            for rel in (rel_data, rel_index):
                (folder / rel).unlink(missing_ok=True)
    info = shards[0]["index"][modality]
    entry = {"index": rel_index, "ivfdata": rel_data, "key": info["key"], "params": info.get("params", ""),
             "ntotal": int(trained.ntotal), "shards": {str(s["id"]): s["files"][INDEX_FILE[modality]] for s in shards},
             "files": {rel: file_record(folder / rel) for rel in (rel_index, rel_data)}}
    manifest.setdefault("merged", {})[modality] = entry
    return len(shards), entry["ntotal"], sum(r["bytes"] for r in entry["files"].values())


def _merge_into(folder: Path, m: dict, modalities, generation: int, report: MergeReport) -> None:
    """Merge each of ``modalities`` that can be into manifest ``m`` (not published), recording what
    happened in ``report``; on any failure the files written so far are removed and it is raised."""
    try:
        for mod in modalities:
            shards, why = eligible(m, mod)
            if why:
                report.skipped[mod] = why
                continue
            report.merged[mod] = _merge_modality(folder, m, mod, shards, generation)
    except BaseException:   # nothing published: the modalities merged before the failure leave nothing either
        for mod in report.merged:
            for rel in m["merged"][mod]["files"]:
                (folder / rel).unlink(missing_ok=True)
        raise


def merge_behind(m: dict, modality: str) -> bool:
    """Whether ``modality``'s current merged index leaves out IVF shards it could cover (appended, or
    written by a compact, since the merge): they are searched beside it until it is merged again."""
    entry = (m.get("merged") or {}).get(modality)
    if entry is None or merge_is_stale(m, modality):
        return False
    shards, why = eligible(m, modality)
    return why is None and {str(s["id"]) for s in shards} != set(entry["shards"])


def merge_again(folder: Path, m: dict) -> MergeReport:
    """Merge again, into manifest ``m`` before its publish, every modality whose merged index a rewrite
    of its shards made stale (``compact``, ``retrieval bias``) or leaves shards out (``merge_behind``):
    a merged folder stays one index per modality, in the same manifest write. A stale modality that
    can no longer be merged (one shard left; shards of another quantizer or codec) loses its entry,
    which no search would use (its files are retired), and is named in the report's ``skipped``
    with the reason; the compact or bias recompute itself goes on."""
    report = MergeReport()
    t0 = time.perf_counter()
    stale = [mod for mod in MODALITIES if merge_is_stale(m, mod)]
    for mod in stale + [mod for mod in MODALITIES if merge_behind(m, mod)]:
        try:
            _merge_into(folder, m, [mod], next_generation(m), report)
        except IndexFolderError as e:   # shards of another quantizer or codec: the operation goes on
            report.skipped[mod] = str(e)
    for mod in report.skipped:
        if mod in stale:   # a current entry left behind by new shards still serves the shards it covers
            m["merged"].pop(mod)
    if not m.get("merged", True):
        m.pop("merged")
    report.seconds = time.perf_counter() - t0
    return report


def merge(folder: str | os.PathLike, modalities: Optional[list[str]] = None) -> MergeReport:
    """Merge each modality's IVF shards of ``folder`` into one on-disk index (see the module doc)."""
    folder, t0 = Path(folder), time.perf_counter()
    report = MergeReport()
    for mod in modalities or ():
        if mod not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {mod!r}")
    with write_lock(folder):
        m = require_manifest(folder)
        if not m.get("complete"):
            raise IndexFolderError(f"{folder} is incomplete; finish its build before merging")
        generation = next_generation(m)
        _merge_into(folder, m, modalities or MODALITIES, generation, report)
        if report.merged:
            m["generation"] = generation
            publish(folder, m)
    report.seconds = time.perf_counter() - t0
    return report
