"""CLIP retrieval engine: sharded FAISS indexes over image-text corpora.

Public API (factory functions, numpy in and out):

- :func:`build_index` — corpus -> index folder (resumable)
- :func:`load_model` — open_clip model from a hub tag or local checkpoint
- :func:`open_corpus` — streaming reader for a folder / manifest / WebDataset tars
- :func:`index_info` — summary of an index folder
- :func:`choose_index_key` — the faiss index rule (pure)
- :func:`open_index` — open an index folder for search (``Index.query`` / ``Index.search``)
- :class:`Classifier` — X-MoRe classification over an index
- :func:`create_app` — the HTTP service (``retrieval.server``; needs fastapi)
"""
from .build import build_index
from .errors import CorpusError, IndexFolderError, ModelLoadError, RetrievalError
from .index_factory import choose_index_key
from .info import index_info
from .models import load_model
from .readers import open_corpus
from .search import open_index
from .classify import Classifier


def create_app(*args, **kwargs):
    """The FastAPI app over opened indexes (see :func:`retrieval.server.create_app`)."""
    from .server import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["build_index", "load_model", "open_corpus", "index_info", "choose_index_key", "open_index", "Classifier",
           "create_app",
           "RetrievalError", "CorpusError", "IndexFolderError", "ModelLoadError"]
__version__ = "0.1.0"
