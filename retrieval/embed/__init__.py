"""Model loading with a stable identity, the DataLoader embedding pipeline, and encoders.

Imports ``corpus`` (readers, image decoding) and nothing above it.
"""
from .encoder import Encoder
from .models import ClipModel, describe, load_model, load_recorded_model, same_model, sha256_file
from .pipeline import Batch, EmbedStream, iter_batches

__all__ = ["ClipModel", "Encoder", "load_model", "load_recorded_model", "same_model", "describe", "sha256_file",
           "Batch", "EmbedStream", "iter_batches"]
