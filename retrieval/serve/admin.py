"""The writing side of the service: the write token, deletes, and picking up newer manifests.

Mutating routes are off unless the server has a write token (``--write-token-file`` or
``RETRIEVAL_WRITE_TOKEN``); then they need ``Authorization: Bearer <token>`` (compared in constant
time) and answer 401 without it, 403 when writes are off (DESIGN §10). They are never behind the
lenient body parsing of read-only routes, and no CORS header is sent for them.

A :class:`Reloader` thread refreshes every index when its folder has a newer manifest (a sync, a
delete by another process): each index swaps its snapshot atomically, so searches in flight finish on
the old one and none sees half an update.
"""
from __future__ import annotations

import hmac
import logging
import os
import threading
from typing import Optional

log = logging.getLogger("retrieval.serve")
TOKEN_ENV = "RETRIEVAL_WRITE_TOKEN"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def read_token(path: Optional[str]) -> Optional[str]:
    """The write token from a file (first line) or the environment; None when writes are off."""
    if path:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
        if len(token) < 16:
            raise ValueError(f"the write token in {path} must be at least 16 characters")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def authorised(token: Optional[str], header: Optional[str]) -> tuple[int, str]:
    """(status, reason): 0 when ``header`` carries ``token``; else the HTTP status to answer."""
    if token is None:
        return 403, "writes are off on this server; start it with --write-token-file or $" + TOKEN_ENV
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 401, "a valid 'Authorization: Bearer <write token>' header is required"
    return 0, ""


class Reloader:
    """Calls ``index.refresh()`` on every index each ``interval`` seconds, on a daemon thread."""

    def __init__(self, indexes: dict, interval: float):
        self.indexes, self.interval = indexes, interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self.interval > 0 and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="index-reloader", daemon=True)
            self._thread.start()

    def reload(self) -> dict[str, int]:
        """Refresh every index now; their manifest generations."""
        for name, idx in self.indexes.items():
            try:
                if idx.refresh():
                    log.warning("index %s: now serving manifest generation %d", name, idx.manifest["generation"])
            except Exception as e:  # noqa: BLE001 - a bad new state keeps the old snapshot serving
                log.warning("index %s: keeps its snapshot; the newer manifest did not open: %s", name, e)
        return {name: int(idx.manifest.get("generation", 0)) for name, idx in self.indexes.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.reload()

    def close(self) -> None:
        self._stop.set()
