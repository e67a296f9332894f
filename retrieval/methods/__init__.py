"""The methods' math, numpy in and out: rerank scores (clip, BSAP, BSAP-H, NNN) and per-item
offsets (``rerank``), bias-augmented faiss indexes (``augmented``), X-MoRe (``xmore``).

Nothing here reads or writes files; ``augmented`` imports only the index-key rule from ``store``.
"""
from . import augmented, rerank, xmore
from .rerank import METHODS

__all__ = ["augmented", "rerank", "xmore", "METHODS"]
