"""The methods' math, numpy in and out: rerank scores (clip, BSAP, BSAP-H, NNN) and per-item
offsets (``rerank``), near-duplicate collapse (``dedup``), X-MoRe (``xmore``). Nothing here reads or
writes files or imports another package of the engine. How one stored index serves every method is
the store's concern (``store.combined``).
"""
from . import dedup, rerank, xmore
from .rerank import METHODS

__all__ = ["dedup", "rerank", "xmore", "METHODS"]
