"""The methods' math, numpy in and out: rerank scores (clip, BSAP, BSAP-H, NNN) and per-item
offsets (``rerank``), near-duplicate collapse (``dedup``), X-MoRe (``xmore``), GDA few-shot (``gda``). Nothing here reads or
writes files or imports another package of the engine. How one stored index serves every method is
the store's concern (``store.combined``).
"""
from . import dedup, gda, rerank, xmore
from .gda import gda_classifier
from .rerank import METHODS

__all__ = ["dedup", "gda", "gda_classifier", "rerank", "xmore", "METHODS"]
