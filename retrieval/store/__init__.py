"""The index folder on disk: layout (file names), manifest, atomic writes, the index-key rule,
faiss index building, the indexer (corpus -> shards) and ``index_info``.

Imports ``embed`` and ``corpus`` (the indexer embeds a corpus) and nothing above them.
"""
from .indexer import DEFAULT_MEMORY_BUDGET, DEFAULT_SHARD_SIZE, index_corpus, write_embeddings
from .info import format_info, index_info
from .keys import choose_index_key
from .manifest import load_manifest, save_manifest

__all__ = ["index_corpus", "write_embeddings", "index_info", "format_info", "choose_index_key", "load_manifest",
           "save_manifest", "DEFAULT_SHARD_SIZE", "DEFAULT_MEMORY_BUDGET"]
