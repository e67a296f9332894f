"""Operations that write an index folder by composing the store with the methods: the build entry
points (shards, then per-item bias offsets; re-running one syncs), ``compute_biases`` (``retrieval
bias``), ``compact`` and ``import_folder`` (clip-retrieval's output, no re-embedding).

Imports ``methods``, ``store``, ``embed`` and ``corpus``; never ``query``, ``classify`` or ``serve``.
"""
from .add import add_embeddings
from .bias import GENERIC_PROMPTS, compute_biases
from .build import build_from_embeddings, build_index
from .compact import compact
from .importer import import_folder

__all__ = ["build_index", "build_from_embeddings", "add_embeddings", "compute_biases", "compact", "import_folder", "GENERIC_PROMPTS"]
