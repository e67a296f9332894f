"""Query vectors from texts, image files or raw embeddings (L2-normalised float32 [n, d])."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..embed.text_cache import TextTower
from ..errors import IndexFolderError, ItemError


def need_model(clip, what: str) -> None:
    if clip is None:
        raise IndexFolderError(f"this Index was opened without a model; pass clip= to {what}")


def encode_texts(clip, texts: list[str]) -> np.ndarray:
    need_model(clip, "search by text")
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("query text is empty")
    if isinstance(clip, TextTower):
        return clip.texts(list(texts))
    from ..embed import Encoder

    return Encoder(clip).texts(list(texts))


def encode_images(clip, paths: list) -> np.ndarray:
    need_model(clip, "search by image")
    if isinstance(clip, TextTower):
        raise IndexFolderError("this Index was opened with a text-only model; open it with the full model "
                               "(clip='auto') to search by image")
    import torch

    from ..corpus.images import decode_image
    from ..embed import Encoder

    ims = []
    for p in paths:
        try:
            ims.append(clip.preprocess(decode_image(p if isinstance(p, (bytes, bytearray)) else str(p))[0]))
        except ItemError as e:
            what = "bytes" if isinstance(p, (bytes, bytearray)) else p
            raise ValueError(f"query image {what}: {e.reason}") from None
    return Encoder(clip).images(torch.stack(ims))


def normalised(embedding) -> np.ndarray:
    with np.errstate(over="ignore"):  # values beyond float32 become inf: refused below
        q = np.atleast_2d(np.asarray(embedding, np.float32))
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if not np.isfinite(q).all() or (norms == 0).any():
        raise ValueError("a query embedding is all zeros or holds NaN or infinite values")
    return q / norms


def query_vectors(clip, text=None, image=None, embedding: Optional[np.ndarray] = None) -> np.ndarray:
    """Exactly one of texts, image paths or raw embeddings, as query vectors."""
    if sum(x is not None for x in (text, image, embedding)) != 1:
        raise ValueError("give exactly one of text, image or embedding")
    if text is not None:
        return encode_texts(clip, [text] if isinstance(text, str) else list(text))
    if image is not None:
        return encode_images(clip, [image] if isinstance(image, (str, os.PathLike)) else list(image))
    return normalised(embedding)
