"""The query side: open an index folder and search it.

``shards`` (check the files on open, load indexes lazily), ``biases`` (stored per-item offsets),
``metadata`` (the Parquet join), ``backends`` (faiss CPU/GPU, torch), ``engine`` (one modality's
search, plain or with offsets), ``rerankers`` (the methods as objects), ``searcher`` and ``index``
(the :class:`Index` API). Imports ``methods``, ``store``, ``embed`` and ``corpus``.
"""
from .index import Index, open_index

__all__ = ["Index", "open_index"]
