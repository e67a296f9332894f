"""Model loading with a stable identity, the DataLoader embedding pipeline, and encoders.

Imports ``corpus`` (readers, image decoding) and nothing above it. torch is imported on first use of
the encoders or the pipeline (``Encoder``, ``iter_batches``, ...), not by ``import retrieval``: a
process that only searches an index never loads it.
"""
from importlib import import_module

from .models import ClipModel, declared_identity, describe, load_model, load_recorded_model, same_model, sha256_file

_LAZY = {"Encoder": ".encoder", "Batch": ".pipeline", "EmbedStream": ".pipeline", "iter_batches": ".pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClipModel", "Encoder", "declared_identity", "load_model", "load_recorded_model", "same_model", "describe", "sha256_file",
           "Batch", "EmbedStream", "iter_batches"]
