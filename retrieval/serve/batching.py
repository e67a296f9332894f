"""Micro-batching for the service: concurrent requests become one model forward and one search.

``MicroBatcher(fn)`` runs ``fn(items) -> results`` (same length, an Exception instance in place of a
failed item's result) on a worker thread. The worker takes the first queued item and everything
already queued, up to ``max_batch``; when the previous batch held more than one item (concurrent
load) it also waits at most ``max_wait_ms`` for more, so a lone client never waits. Awaiting callers
get their own result. When ``fn`` raises for a whole batch, the batch is retried one item at a
time, so one bad request fails alone and never takes its neighbours down.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)
_STOP = object()


class MicroBatcher:
    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 64,
                 max_wait_ms: float = 4.0, name: str = "batcher"):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000.0
        self._q: queue.Queue = queue.Queue()
        self.batches = 0      # statistics: batches run and items served
        self.items = 0
        self._last = 1        # size of the previous batch
        self.name = name
        self._thread = threading.Thread()
        self.start()

    def start(self) -> None:
        """Start the worker (again, after ``close``); a no-op while it runs."""
        if not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` and wait for its result (raises the item's exception)."""
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is stopped")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((item, fut, loop))
        return await fut

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued work, then stop the worker."""
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + (self.max_wait if self._last > 1 else 0.0)
            while len(batch) < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    nxt = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._last = len(batch)
            self._process(batch)
            if stop:
                return

    def _process(self, batch: list) -> None:
        items = [b[0] for b in batch]
        try:
            results = list(self.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception:  # isolate the failing request(s)
            log.debug("batch of %d failed; retrying one by one", len(items), exc_info=True)
            results = []
            for it in items:
                try:
                    results.append(self.fn([it])[0])
                except Exception as e:  # noqa: BLE001 - handed to that request's caller
                    results.append(e)
        self.batches += 1
        self.items += len(items)
        for (_, fut, loop), res in zip(batch, results):
            loop.call_soon_threadsafe(_resolve, fut, res)


def _resolve(fut: asyncio.Future, res: Any) -> None:
    if fut.done():  # the caller went away (client disconnected)
        return
    if isinstance(res, BaseException):
        fut.set_exception(res)
    else:
        fut.set_result(res)
