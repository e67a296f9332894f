"""Region boxes of an image for ComCLIP: training-free proposals, or a dense captioner's boxes.

- :func:`proposals`: OpenCV contrib's selective search (Uijlings et al. 2013; "fast" mode) on the
  image scaled to ``side`` pixels, then :func:`select_boxes`: its own order is random (it ranks boxes
  with an unseeded RNG), so boxes are chosen by how many of its strategies found them (a
  deterministic objectness), within an area range, without heavy overlaps.
- :func:`dense_caption_boxes`: the boxes of a GRiT output in ComCLIP's shape ``{caption: [[x1, y1,
  x2, y2], ...]}`` (every box of every caption; ValueError, one line, for anything else).
Boxes are (left, top, right, bottom) in the image's pixels, as GRiT writes them.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]
MAX_BOXES = 16


def _cv2():
    try:
        import cv2

        cv2.ximgproc.segmentation  # noqa: B018  (contrib build check)
    except (ImportError, AttributeError) as e:
        raise ImportError("region proposals need OpenCV contrib: pip install 'retrieval[comclip]' "
                          "(or pass dense-caption boxes)") from e
    return cv2


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a [n, 4] and b [m, 4] (left, top, right, bottom): [n, m]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    inter = w * h
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def select_boxes(boxes: Sequence[Box], size: tuple[int, int], max_boxes: int = MAX_BOXES, min_area: float = 0.02,
                 max_area: float = 0.9, same: float = 0.7, overlap: float = 0.5) -> list[Box]:
    """Up to ``max_boxes`` of ``boxes`` whose area is within [min_area, max_area] of the image's: the
    ones found most often (support: how many boxes overlap them by IoU > ``same``; selective search's
    strategies agree on real objects), larger first on ties, none overlapping a kept one by more than
    ``overlap``. Deterministic and pure: the order ``boxes`` come in does not matter."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    frac = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / float(size[0] * size[1])
    b, frac = b[(frac >= min_area) & (frac <= max_area)], frac[(frac >= min_area) & (frac <= max_area)]
    if not len(b) or max_boxes <= 0:
        return []
    support = (iou_matrix(b, b) > same).sum(1)
    order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], -frac, -support))
    kept: list[int] = []
    for i in order:
        if not kept or iou_matrix(b[i], b[kept]).max() <= overlap:
            kept.append(int(i))
            if len(kept) == max_boxes:
                break
    return [tuple(float(v) for v in b[i]) for i in kept]


def proposals(image: Image.Image, max_boxes: int = MAX_BOXES, side: int = 160) -> list[Box]:
    """Selective-search boxes of ``image`` (see the module docstring), in the image's pixels."""
    cv2 = _cv2()
    w, h = image.size
    scale = side / max(w, h)
    small = image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))))
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(np.asarray(small)[:, :, ::-1]))
    ss.switchToSelectiveSearchFast()
    rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2], rects[:, 1] + rects[:, 3]], 1) / scale
    boxes[:, 2], boxes[:, 3] = np.minimum(boxes[:, 2], w), np.minimum(boxes[:, 3], h)
    return select_boxes(boxes, (w, h), max_boxes)


def given_boxes(given: Optional[Mapping[str, Sequence[Box]]], row: dict) -> Optional[Sequence[Box]]:
    """A row's boxes in ``given`` (by its key, else its image path), or None."""
    return None if given is None else given.get(row.get("key"), given.get(row.get("image_path")))


def dense_caption_boxes(obj) -> list[Box]:
    """Every box of a dense-caption output ``{caption: [[x1, y1, x2, y2], ...]}``."""
    if not isinstance(obj, dict):
        raise ValueError("dense-caption regions are {caption: [[x1, y1, x2, y2], ...]}")
    out = []
    for caption, boxes in obj.items():
        if isinstance(boxes, (list, tuple)) and len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
            boxes = [boxes]
        for b in boxes if isinstance(boxes, (list, tuple)) else [None]:
            if not (isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
                    and b[2] > b[0] and b[3] > b[1]):
                raise ValueError(f"region {caption!r}: a box is [left, top, right, bottom] with right > left "
                                 f"and bottom > top, got {b!r}")
            out.append(tuple(float(v) for v in b))
    return out
