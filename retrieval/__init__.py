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
from .classify import Classifier
from .corpus import open_corpus
from .embed import load_model
from .errors import CorpusError, IndexFolderError, ModelLoadError, RetrievalError
from .methods import gda_classifier, xmore
from .ops import add_embeddings, build_from_embeddings, build_index, compact, import_folder
from .query import Index, open_index
from .store import choose_index_key, format_info, index_info


def create_app(*args, **kwargs):
    """The FastAPI app over opened indexes (see :func:`retrieval.serve.create_app`)."""
    from .serve import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["build_index", "build_from_embeddings", "add_embeddings", "compact", "import_folder", "open_index", "Index", "load_model", "index_info", "format_info", "open_corpus",
           "choose_index_key", "Classifier", "xmore", "gda_classifier", "create_app",
           "RetrievalError", "CorpusError", "IndexFolderError", "ModelLoadError"]
__version__ = "0.1.0"
