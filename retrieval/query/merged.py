"""A merged on-disk index (``ops.merge``) as the query side sees it: opened memory-mapped (its
``.ivfdata`` lists in the page cache, not the process), searched in place of the shards it covers,
with ids that are already global. A merged index whose covered shard files changed is stale and
ignored (the shards are searched), with one warning. A plain IVF one is also a coarse group of one
(``query.coarse.single_group``): a few queries' coarse search reads the fp16 copy of its centroids
(``query.probe``), as the shards' joined search does."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from ..store.files import quiet_stdout
from ..store.layout import INDEX_FILE
from .coarse import CoarseGroup, single_group
from .reading import reading

log = logging.getLogger("retrieval.query")


@dataclass
class Merged:
    index: object              # the faiss index (OnDiskInvertedLists)
    positions: np.ndarray      # the shard positions it covers
    id_space: int              # one past its largest global id
    others: Optional[np.ndarray] = None   # the positions it does not cover (searched beside it)
    group: Optional[CoarseGroup] = None   # the index as a coarse group of one (None: not a plain IVF)

    def mask(self, starts: np.ndarray, rows: np.ndarray, masks: list) -> Optional[np.ndarray]:
        """One mask over global ids [0, id_space) from the covered shards' masks (None: all rows)."""
        if all(masks[i] is None for i in self.positions):
            return None
        out = np.zeros(self.id_space, bool)
        for i in self.positions:
            out[starts[i]:starts[i] + rows[i]] = True if masks[i] is None else masks[i]
        return out


def open_merged(shards, modality: str) -> Optional[Merged]:
    """``shards``' (a ``query.shards.ShardSet``) merged index of ``modality`` when it is current for
    them, else None."""
    import faiss

    entry = (shards.manifest.get("merged") or {}).get(modality)
    if entry is None:
        return None
    pos = {s["id"]: i for i, s in enumerate(shards.shards)}
    covered = [(int(k), rel) for k, rel in entry["shards"].items()]
    if shards.manifest.get("shard_filter") and any(k not in pos for k, _ in covered):
        return None  # a shard group holding some of its shards: they are searched one by one
    if any(k not in pos or shards.shards[pos[k]]["files"].get(INDEX_FILE[modality]) != rel for k, rel in covered):
        log.warning("%s: the merged %s index is stale (its shards changed since); searching the shards - "
                    "rerun `retrieval merge`", shards.folder, modality)
        return None
    path = shards.folder / entry["index"]
    with reading(path):
        with quiet_stdout():
            index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    params = shards.search_params or entry.get("params")
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    positions = np.array(sorted(pos[k] for k, _ in covered), np.int64)
    if index.ntotal != int(shards.rows[positions].sum()):
        raise IndexFolderError(f"{path} holds {index.ntotal} vectors, its shards {int(shards.rows[positions].sum())}; "
                               f"rerun `retrieval merge`")
    return Merged(index, positions, int((shards.starts[positions] + shards.rows[positions]).max()),
                  np.setdiff1d(np.arange(len(shards.shards)), positions), single_group(index))
