"""Shards a search could not reach: an engine that fans out to remote shard groups reports the
shards it had to leave out (``report_missing``), and the caller that wants to flag its answer as
partial collects them around the search (``collect_missing``). In-process searches report nothing."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterable, Iterator, Optional

_missing: contextvars.ContextVar[Optional[set]] = contextvars.ContextVar("retrieval_missing_shards", default=None)


@contextlib.contextmanager
def collect_missing() -> Iterator[set]:
    """The set of shard ids left out of the searches run inside the block (in this context)."""
    found: set = set()
    token = _missing.set(found)
    try:
        yield found
    finally:
        _missing.reset(token)


def report_missing(shard_ids: Iterable[int]) -> None:
    """Record shards a search left out (no-op outside ``collect_missing``)."""
    found = _missing.get()
    if found is not None:
        found.update(int(i) for i in shard_ids)
