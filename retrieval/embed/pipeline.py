"""Embedding pipeline: DataLoader workers read, decode, preprocess and tokenize; the model encodes.

The input positions to embed (all of them, or the ones a run's plan lists) are cut into batches of
``batch_size``; worker ``w`` of ``W`` owns the batches ``b`` with ``b % W == w`` and loads only their
payloads. Each batch carries its index, and the consumer re-orders them, so the output order is the
corpus order whatever the scheduling.

Items without a caption are embedded (image only; ``has_caption`` says which rows have one) unless
captions are required, in which case they are skipped and logged like any bad item.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..corpus import CorpusReader
from ..corpus.images import DEFAULT_MAX_PIXELS, decode_image
from ..errors import ItemError


@dataclass
class Batch:
    index: int
    first_pos: int
    end_pos: int  # one past the last input position the batch covers
    images: object = None  # float tensor [n, 3, H, W] (None when n == 0)
    tokens: object = None  # long tensor [number of rows with a caption, ctx] (None when none has one)
    rows: list = field(default_factory=list)  # metadata dicts, row-aligned with images
    has_caption: list = field(default_factory=list)  # per row: whether it has a caption (and a token row)
    errors: list = field(default_factory=list)  # {"pos","key","path","stage","reason","action"}


def _err(e, stage: str, reason: str, action: str = "skipped") -> dict:
    return {"pos": e.pos, "key": e.key, "path": e.image_path, "stage": stage, "reason": reason, "action": action,
            "source": e.source}


def caption_too_long(tokenizer, text: str) -> bool:
    """Whether ``text`` exceeds the tokenizer's context (start/end tokens included)."""
    enc = getattr(tokenizer, "encode", None)
    ctx = getattr(tokenizer, "context_length", None)
    if enc is None or ctx is None:
        return False
    return len(enc(text)) + 2 > ctx


class EmbedStream(IterableDataset):
    """Batches of decoded, preprocessed, tokenized items; in a DataLoader each worker owns every W-th batch."""

    def __init__(self, reader: CorpusReader, preprocess: Callable, tokenizer: Callable, batch_size: int,
                 positions: Optional[np.ndarray] = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 require_captions: bool = False):
        self.reader, self.preprocess, self.tokenizer = reader, preprocess, tokenizer
        self.batch_size, self.max_pixels, self.require_captions = batch_size, max_pixels, require_captions
        self.positions = None if positions is None else np.asarray(positions, np.int64)

    def _batch_of(self, pos: int) -> int:
        """The batch of input position ``pos`` (-1 when it is not to be embedded)."""
        if self.positions is None:
            return pos // self.batch_size
        i = int(np.searchsorted(self.positions, pos))
        return i // self.batch_size if i < len(self.positions) and self.positions[i] == pos else -1

    def _finish(self, b: int, first: int, items: list, errors: list, end_pos: int) -> Batch:
        batch = Batch(b, first, end_pos, errors=errors)
        if items:
            batch.images = torch.stack([t for t, _, _ in items])
            captions = [c for _, c, _ in items if c is not None]
            batch.tokens = self.tokenizer(captions) if captions else None
            batch.has_caption = [c is not None for _, c, _ in items]
            batch.rows = [r for _, _, r in items]
        return batch

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)

        def want(pos: int) -> bool:
            b = self._batch_of(pos)
            return b >= 0 and b % nw == w

        cur, first, items, errors, last = None, 0, [], [], None
        for e in self.reader.entries(want):
            if not want(e.pos):
                continue
            b = self._batch_of(e.pos)
            if cur is not None and b != cur:
                yield self._finish(cur, first, items, errors, last + 1)
                items, errors = [], []
            if b != cur:
                first = e.pos
            cur, last = b, e.pos
            if e.error is None and e.caption is None and self.require_captions:
                e.error = ("caption", "missing or empty caption")
            if e.error is not None:
                errors.append(_err(e, *e.error))
                continue
            try:
                img, repairs = decode_image(e.image, self.max_pixels)
                tensor = self.preprocess(img)
            except ItemError as ie:
                errors.append(_err(e, ie.stage, ie.reason))
                continue
            except Exception as ex:  # a transform failing on an odd image must not kill the build
                errors.append(_err(e, "preprocess", f"{type(ex).__name__}: {str(ex)[:200]}"))
                continue
            repairs = list(e.repairs) + repairs
            if e.caption is not None and caption_too_long(self.tokenizer, e.caption):
                repairs.append("caption longer than the model context; truncated for embedding")
            for r in repairs:
                errors.append(_err(e, "repair", r, action="repaired"))
            row = {"key": e.key, "image_path": e.image_path, "caption": e.caption, **e.extra,
                   "_source": e.source, "_pos": e.pos}
            items.append((tensor, e.caption, row))
        if cur is not None:
            yield self._finish(cur, first, items, errors, last + 1)


def _as_is(batch: Batch) -> Batch:
    """Module-level collate function (picklable under spawn/forkserver): batches are built in workers."""
    return batch


def _die_with_parent(_worker_id: int) -> None:
    """DataLoader worker init: on Linux the kernel SIGKILLs the worker when the build process dies
    (after a kill -9 of the build, workers blocked on a full queue otherwise live on, holding memory)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the build died before the request took effect
            os._exit(0)


def iter_batches(reader: CorpusReader, preprocess: Callable, tokenizer: Callable, batch_size: int = 64,
                 workers: int = 2, positions: Optional[np.ndarray] = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 prefetch: int = 4, require_captions: bool = False) -> Iterator[Batch]:
    """Batches in corpus order of the input ``positions`` (None: every position)."""
    from torch.utils.data import DataLoader

    ds = EmbedStream(reader, preprocess, tokenizer, batch_size, positions, max_pixels, require_captions)
    if workers <= 0:
        yield from ds
        return
    loader = DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=prefetch,
                        persistent_workers=False, collate_fn=_as_is, worker_init_fn=_die_with_parent)
    pending: dict[int, Batch] = {}
    nxt = 0
    for batch in loader:
        pending[batch.index] = batch
        while nxt in pending:
            yield pending.pop(nxt)
            nxt += 1
    if pending:  # cannot happen with contiguous positions; never drop data silently
        raise RuntimeError(f"embedding stream lost batches before {sorted(pending)[:3]}")
