"""The models ``retrieval serve`` answers with, attached so that text queries are answered from the
first second.

Loading a whole open_clip model (``import open_clip``, building the model, reading its weights) is
most of a server's start: ~5 s before the first answer for ViT-B-32 on 2 cores. A text query needs
only the text tower, and the CLI caches one per model (``embed.text_cache``: TorchScript, no
open_clip import). So each index, opened without a model, gets its model's cached text tower at
once, and the full model is loaded in one background thread (indexes of one model share it) and
then replaces the tower. A request that needs the full model (an image query or upload, an image
example, classification, ComCLIP) waits for that load on the event loop, holding no worker thread
(``ModelLoading.loaded``); if the load fails, those requests get a 503 naming why, and text,
embedding and keyword queries go on. A model with no cached tower (first start, a GPU, an unusual
tokenizer) is loaded in full before serving, as before, and its tower is cached in a background
thread for the next start (TorchScript's tracer state is per thread).

Text query vectors from the tower equal the full model's ``encode_text`` within 1e-5 (the cache
checks its trace); once the full model is attached, texts go through its encoder (within 1e-4).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("retrieval.serve")

WAIT_S = 600.0   # the longest a request waits for a full model still loading


class ModelLoading:
    """Which indexes still wait for their full model, and why a load failed."""

    def __init__(self):
        self._done: dict[str, threading.Event] = {}
        self._error: dict[str, str] = {}
        self._threads: list[threading.Thread] = []

    def later(self, names: list[str], work: Callable[[], None]) -> None:
        """Run ``work`` (load a model, attach it to indexes ``names``) in a background thread; until it
        returns, those indexes wait; if it raises, they fail with its reason."""
        done = threading.Event()
        for name in names:
            self._done[name] = done

        def run() -> None:
            try:
                work()
            except Exception as e:  # noqa: BLE001 - reported to every request that needs the model
                why = f"the model of {', '.join(map(repr, names))} could not be loaded: {type(e).__name__}: {e}"
                log.error("%s; text, embedding and keyword queries are still served", why)
                for name in names:
                    self._error[name] = why
            finally:
                done.set()

        thread = threading.Thread(target=run, name="model-load", daemon=True)
        self._threads.append(thread)
        thread.start()

    def aside(self, work: Callable[[], object]) -> None:
        """Run ``work`` in a background thread that no request waits for (a failure is logged)."""
        def run() -> None:
            try:
                work()
            except Exception as e:  # noqa: BLE001 - only a later start's speed depends on it
                log.warning("caching the text tower failed: %s: %s", type(e).__name__, e)

        self._threads.append(threading.Thread(target=run, name="tower-cache", daemon=True))
        self._threads[-1].start()

    def wait(self, name: str, timeout: float = WAIT_S) -> Optional[str]:
        """None once index ``name`` has its full model (at once if it never waited); else why not (its
        load failed, or is still running after ``timeout`` seconds)."""
        done = self._done.get(name)
        if done is None:
            return None
        if not done.wait(timeout):
            return f"the model of index {name!r} is still loading; retry in a few seconds"
        return self._error.get(name)

    async def loaded(self, name: str, timeout: float = WAIT_S) -> None:
        """Return once index ``name``'s full model load has ended (at once if it never waited), or after
        ``timeout`` seconds, holding no thread meanwhile (a request waits on the event loop)."""
        import asyncio

        done, deadline = self._done.get(name), time.monotonic() + timeout
        while done is not None and not done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def state(self) -> str:
        """"loading" while a background load runs, "failed" if one failed, else "ready"."""
        if not all(d.is_set() for d in self._done.values()):
            return "loading"
        return "failed" if self._error else "ready"

    def join(self, timeout: Optional[float] = None) -> None:
        for t in self._threads:
            t.join(timeout)


def attach_models(indexes: dict, device: str = "auto", load: Optional[Callable] = None,
                  tower: Optional[Callable] = None) -> ModelLoading:
    """Give each of ``indexes`` ({name: Index opened without a model}) its model: the cached text
    tower now and the full model from a background thread, or the full model now when no tower is
    cached for it. ``load(identity, device)`` and ``tower(identity)`` default to
    ``embed.load_recorded_model`` and ``embed.text_cache.load_text_tower`` (injected by tests)."""
    from ..embed.models import load_recorded_model, resolve_device
    from ..embed.text_cache import load_text_tower, save_text_tower

    load, tower = load or load_recorded_model, tower or load_text_tower
    loading = ModelLoading()
    groups: dict[str, list[str]] = {}
    for name, idx in indexes.items():
        groups.setdefault(json.dumps(idx.manifest["model"], sort_keys=True, default=str), []).append(name)
    for names in groups.values():
        identity = indexes[names[0]].manifest["model"]
        text = tower(identity) if resolve_device(device) == "cpu" else None
        if text is None:   # the full model now; its tower cached for the next start, meanwhile
            clip = load(identity, device)
            for name in names:
                indexes[name].attach_model(clip)
            loading.aside(lambda clip=clip: save_text_tower(clip))
            continue
        for name in names:
            indexes[name].attach_model(text)

        def work(identity=identity, names=names) -> None:
            clip = load(identity, device)
            for name in names:
                indexes[name].attach_model(clip)

        loading.later(names, work)
    return loading
