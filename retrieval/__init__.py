"""CLIP retrieval engine: sharded FAISS indexes over image-text corpora.

Public API (factory functions, numpy in and out):

- :func:`build_index` — corpus -> index folder (resumable)
- :func:`load_model` — open_clip model from a hub tag or local checkpoint
- :func:`open_corpus` — streaming reader for a folder / manifest / WebDataset tars
- :func:`index_info` — summary of an index folder
- :func:`choose_index_key` — the faiss index rule (pure)
"""
from .build import build_index
from .errors import CorpusError, IndexFolderError, ModelLoadError, RetrievalError
from .index_factory import choose_index_key
from .info import index_info
from .models import load_model
from .readers import open_corpus

__all__ = ["build_index", "load_model", "open_corpus", "index_info", "choose_index_key",
           "RetrievalError", "CorpusError", "IndexFolderError", "ModelLoadError"]
__version__ = "0.1.0"
