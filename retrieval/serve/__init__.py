"""The HTTP service: ``service`` (indexes, micro-batched search, classifiers; no web framework),
``batching``, ``routes`` + ``bodylimit`` (FastAPI), ``app`` (``create_app``), ``web/`` (the page).

Imports ``classify``, ``query`` and below; nothing imports ``serve`` but the CLI and the top-level API.
"""
from .app import create_app

__all__ = ["create_app"]
