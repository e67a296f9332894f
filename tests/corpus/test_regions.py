"""Region boxes for ComCLIP: the pure box choice (area range, support, overlap, order-free), the
selective-search proposals on a synthetic image (deterministic, inside the image, finding the two
painted objects), and dense-caption files in ComCLIP's shape."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from retrieval.corpus.regions import dense_caption_boxes, iou_matrix, proposals, select_boxes


def test_iou_matrix():
    m = iou_matrix([(0, 0, 10, 10), (5, 0, 15, 10)], [(0, 0, 10, 10), (20, 20, 30, 30)])
    assert m.tolist() == [[1.0, 0.0], [pytest.approx(50 / 150), 0.0]]


def test_select_boxes_is_pure_and_order_free():
    size = (100, 100)
    boxes = [(0, 0, 100, 100),                  # 100 %: above max_area
             (0, 0, 10, 10),                    # 1 %: below min_area
             (10, 10, 50, 50), (11, 10, 50, 50), (10, 11, 50, 51),   # one object found three times
             (60, 60, 90, 90),                  # found once
             (12, 12, 50, 50)]                  # heavy overlap with the first object
    got = select_boxes(boxes, size, max_boxes=5)
    assert got[0][:2] in ((10.0, 10.0), (11.0, 10.0), (10.0, 11.0))   # the best-supported first
    assert (60.0, 60.0, 90.0, 90.0) in got and len(got) == 2
    assert select_boxes(boxes[::-1], size, max_boxes=5) == got
    assert select_boxes(boxes, size, max_boxes=1) == got[:1]
    assert select_boxes([], size) == [] and select_boxes(boxes, size, max_boxes=0) == []


def test_proposals_find_the_painted_objects():
    pytest.importorskip("cv2")
    im = Image.new("RGB", (200, 120), (235, 235, 235))
    d = ImageDraw.Draw(im)
    d.rectangle([20, 20, 80, 100], fill=(200, 20, 20))
    d.ellipse([120, 30, 180, 90], fill=(20, 20, 200))
    a, b = proposals(im, 16), proposals(im, 16)
    assert a == b and 0 < len(a) <= 16
    assert all(0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 120 for x0, y0, x1, y1 in a)
    best = iou_matrix([(20, 20, 81, 101), (120, 30, 181, 91)], a).max(1)
    assert (best > 0.6).all(), best


def test_dense_caption_files():
    boxes = dense_caption_boxes({"a man": [[1, 2, 30, 40], [5, 5, 9, 9]], "a dog": [0, 0, 10, 10]})
    assert boxes == [(1.0, 2.0, 30.0, 40.0), (5.0, 5.0, 9.0, 9.0), (0.0, 0.0, 10.0, 10.0)]
    for bad in ([1, 2], {"x": [[1, 2, 3]]}, {"x": [[5, 5, 1, 1]]}, {"x": "box"}, {"x": [["a", 1, 2, 3]]}):
        with pytest.raises(ValueError):
            dense_caption_boxes(bad)
