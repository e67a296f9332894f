"""Atomic writers of the folder's file formats: npy, Parquet (with the shard id), faiss."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .atomic import atomic_path, write_failure
from .layout import METADATA_ROW_GROUP


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            np.save(f, arr)
        except OSError as e:
            if e.errno is not None:
                raise
            # numpy's fwrite says only "N requested and M written"
            raise write_failure(path, f"short write ({e})") from None


PARQUET_SHARD_KEY = b"retrieval.shard"  # key-value metadata: which shard (id, first global id) a file holds


def save_parquet(path: Path, rows, schema, shard: Optional[tuple[int, int]] = None) -> None:
    """Row-aligned metadata (dicts or a pyarrow Table) in small row groups; ``shard`` = (id, offset) is stored in the file's
    key-value metadata, so a metadata file swapped for another shard's is named on open."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if shard is not None:
        schema = schema.with_metadata({**(schema.metadata or {}), PARQUET_SHARD_KEY: json.dumps(list(shard)).encode()})
    table = rows.cast(schema) if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=METADATA_ROW_GROUP)


def save_faiss(path: Path, index) -> None:
    import faiss

    with atomic_path(path) as tmp:
        try:
            faiss.write_index(index, tmp)
        except RuntimeError:  # the index is in memory and valid: only the write can have failed
            raise write_failure(path, "faiss could not write the file (the disk may be full)") from None


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send what C++ code prints on file descriptor 1 to /dev/null for the block (faiss's on-disk
    lists print their file names): a command's stdout stays its own results."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
