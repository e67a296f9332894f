"""CLIP retrieval engine: sharded FAISS indexes over image-text corpora.

Public API (stable; factory functions, numpy in and out):

- :func:`build_index` — corpus -> index folder (resumable), with the bias offsets
- :func:`build_from_embeddings` — precomputed, row-aligned embeddings -> index folder;
  :func:`add_embeddings` appends more (``Index.delete`` deletes, :func:`compact` reclaims)
- :func:`import_folder` — clip-retrieval's ``inference`` output -> index folder, no re-embedding
- :func:`open_index` — open an index folder for search (``Index.query`` / ``Index.search``)
- :func:`load_model` — open_clip model from a hub tag or local checkpoint
- :func:`index_info` — summary of an index folder (:func:`format_info` prints it)
- :func:`open_corpus` — streaming reader for a folder / manifest / WebDataset tars
- :func:`choose_index_key` — the faiss index rule (pure)
- :class:`Classifier` — X-MoRe classification over an index; :mod:`xmore` — its math
- :func:`gda_classifier` — GDA few-shot classifier (support embeddings + class text embeddings)
- :func:`create_app` — the HTTP service (needs fastapi)
- the errors: :class:`RetrievalError` and its subclasses

The packages behind it follow the data path (see ARCHITECTURE.md): corpus -> embed -> store ->
methods -> ops / query -> classify -> serve, cli.
"""
from importlib import import_module

from .errors import CorpusError, IndexFolderError, ModelLoadError, RetrievalError

# Imported on first use (PEP 562): `retrieval info` or a search by embedding does not pay for the
# packages it never touches (classification, model loading, the build).
_LAZY = {"Classifier": ".classify", "open_corpus": ".corpus", "load_model": ".embed", "gda_classifier": ".methods",
         "xmore": ".methods", "add_embeddings": ".ops", "build_from_embeddings": ".ops", "build_index": ".ops",
         "compact": ".ops", "import_folder": ".ops", "Index": ".query", "open_index": ".query",
         "choose_index_key": ".store", "format_info": ".store", "index_info": ".store"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_app(*args, **kwargs):
    """The FastAPI app over opened indexes (see :func:`retrieval.serve.create_app`)."""
    from .serve import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["build_index", "build_from_embeddings", "add_embeddings", "compact", "import_folder", "open_index", "Index", "load_model", "index_info", "format_info", "open_corpus",
           "choose_index_key", "Classifier", "xmore", "gda_classifier", "create_app",
           "RetrievalError", "CorpusError", "IndexFolderError", "ModelLoadError"]
__version__ = "0.1.0"
