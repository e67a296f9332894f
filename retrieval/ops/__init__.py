"""Operations that write an index folder by composing the store with the methods: the build entry
points (shards, then per-item bias offsets; re-running one syncs), ``compute_biases`` (``retrieval
bias``) and ``compact``.

Imports ``methods``, ``store``, ``embed`` and ``corpus``; never ``query``, ``classify`` or ``serve``.
"""
from .add import add_embeddings
from .bias import GENERIC_PROMPTS, compute_biases
from .build import build_from_embeddings, build_index
from .compact import compact

__all__ = ["build_index", "build_from_embeddings", "add_embeddings", "compute_biases", "compact", "GENERIC_PROMPTS"]
