"""Region boxes of an image for ComCLIP: training-free proposals, or a dense captioner's boxes.

- :func:`proposals`: OpenCV contrib's selective search (Uijlings et al. 2013; "fast" mode) on the
  image scaled to ``side`` pixels, boxes smaller than ``min_area`` or larger than ``max_area`` of the
  image dropped, near-duplicates (IoU > ``iou``) merged, the first ``max_boxes`` kept (selective search
  lists its hierarchy's boxes from the finest merges up).
- :func:`dense_caption_boxes`: the boxes of a GRiT output in ComCLIP's shape ``{caption: [[x1, y1,
  x2, y2], ...]}`` (every box of every caption; ValueError, one line, for anything else).
Boxes are (left, top, right, bottom) in the image's pixels, as GRiT writes them.
"""
from __future__ import annotations

from typing import Sequence

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


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_boxes(boxes: Sequence[Box], size: tuple[int, int], max_boxes: int = MAX_BOXES, min_area: float = 0.02,
                 max_area: float = 0.9, iou_limit: float = 0.7) -> list[Box]:
    """The first ``max_boxes`` of ``boxes`` (in order) whose area is within [min_area, max_area] of the
    image's and that overlap no kept box by more than ``iou_limit``. Pure."""
    area = float(size[0] * size[1])
    kept: list[Box] = []
    for b in boxes:
        a = (b[2] - b[0]) * (b[3] - b[1]) / area
        if min_area <= a <= max_area and all(iou(b, k) <= iou_limit for k in kept):
            kept.append(tuple(float(v) for v in b))
            if len(kept) == max_boxes:
                break
    return kept


def proposals(image: Image.Image, max_boxes: int = MAX_BOXES, side: int = 160) -> list[Box]:
    """Selective-search boxes of ``image`` (see the module docstring), in the image's pixels."""
    cv2 = _cv2()
    w, h = image.size
    scale = side / max(w, h)
    small = image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))))
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(np.asarray(small)[:, :, ::-1]))
    ss.switchToSelectiveSearchFast()
    rects = ss.process()
    boxes = [(x / scale, y / scale, min(w, (x + bw) / scale), min(h, (y + bh) / scale)) for x, y, bw, bh in rects]
    return select_boxes(boxes, (w, h), max_boxes)


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
