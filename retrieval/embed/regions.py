"""An image's regions as ComCLIP uses them: boxes (given, or selective-search proposals) and the raw
(not normalised) embeddings of the whole image and of each box's masked image. Used at query time
(``query.comclip``) and by ``retrieval regions`` (``ops.regions``), which stores them per shard."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..corpus.regions import MAX_BOXES, proposals
from ..corpus.subimages import black_outside


@dataclass(frozen=True)
class Regions:
    """Boxes [(left, top, right, bottom)], the whole image's raw embedding [d] and each box's masked
    image's raw embedding [b, d]."""
    boxes: list
    whole: np.ndarray
    embs: np.ndarray


def encode_raw(clip, images: list) -> np.ndarray:
    """Raw (not normalised) float32 embeddings [n, d] of PIL images, 64 per forward."""
    import torch

    from .encoder import Encoder

    enc = Encoder(clip)
    return np.concatenate([enc.images(torch.stack([clip.preprocess(im) for im in images[i:i + 64]]), normalise=False)
                           for i in range(0, len(images), 64)])


def image_regions(clip, images: Sequence, given: Sequence = (), max_boxes: int = MAX_BOXES) -> list[Optional[Regions]]:
    """The :class:`Regions` of each PIL image (None for None): ``given`` boxes where not None, else
    selective-search proposals, one search per core (OpenCV releases the GIL)."""
    found = list(given) or [None] * len(images)
    todo = [i for i, (b, im) in enumerate(zip(found, images)) if b is None and im is not None]
    if todo:
        with ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
            for i, b in zip(todo, pool.map(lambda i: proposals(images[i], max_boxes), todo)):
                found[i] = b
    batch, spans = [], []
    for bx, image in zip(found, images):
        spans.append(None if image is None else (len(batch), [tuple(map(float, b)) for b in bx]))
        if image is not None:
            batch += [image] + [black_outside(image, b) for b in bx]
    embs = encode_raw(clip, batch) if batch else None
    return [None if sp is None else Regions(sp[1], embs[sp[0]], embs[sp[0] + 1:sp[0] + 1 + len(sp[1])])
            for sp in spans]
