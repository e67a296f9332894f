"""ComCLIP's score and sub-images (issue 21, first part): the fused score equals a direct numpy
computation of the released code's formula, for both weightings; the masks and overlays paint what
the code paints, on a synthetic image."""
import numpy as np
import pytest
from PIL import Image

from retrieval.corpus.subimages import black_outside, entity_image, overlay, predicate_image
from retrieval.methods.comclip import comclip_score, fuse, part_weights


def _direct(g, sub, parts, cap, weighting, temperature=1.0):
    s = np.array([u @ e for u, e in zip(parts, sub)])
    z = np.exp((s - s.max()) / temperature)                      # softmax, shifted to stay finite
    w = s / s.sum() if weighting == "sum" else z / z.sum()
    v = g.copy()
    for wk, e in zip(w, sub):
        v = v + wk * e
    return (v / np.linalg.norm(v)) @ (cap / np.linalg.norm(cap))


@pytest.mark.parametrize("weighting,temperature", [("sum", 1.0), ("softmax", 1.0), ("softmax", 0.05)])
def test_the_score_is_the_released_formula(weighting, temperature):
    rng = np.random.default_rng(0)
    g, cap = rng.standard_normal(32) * 3, rng.standard_normal(32) * 2
    sub, parts = rng.standard_normal((3, 32)) + 1, rng.standard_normal((3, 32)) + 1   # scores positive
    got = comclip_score(g, sub, parts, cap, weighting, temperature)
    assert got == pytest.approx(_direct(g, sub, parts, cap, weighting, temperature), rel=1e-9)
    assert fuse(g, sub[:0], parts[:0]).tolist() == g.tolist()                      # no parts: CLIP's
    assert comclip_score(g, sub[:0], parts[:0], cap) == pytest.approx(g @ cap / np.linalg.norm(g) / np.linalg.norm(cap))


def test_weights():
    assert part_weights(np.array([1.0, 3.0])).tolist() == [0.25, 0.75]
    w = part_weights(np.array([1.0, 3.0]), "softmax", 0.5)
    assert w.sum() == pytest.approx(1.0) and w[1] / w[0] == pytest.approx(np.exp(4.0))
    with pytest.raises(ValueError, match="sum to zero"):
        part_weights(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="weighting"):
        part_weights(np.array([1.0]), "max")


def test_masks_and_overlays_paint_what_the_code_paints():
    img = Image.new("RGB", (20, 10), (200, 100, 50))
    a = np.asarray(black_outside(img, (2, 1, 5, 4)))
    assert (a[1:5, 2:6] == [200, 100, 50]).all() and a[0].sum() == 0 and a[:, 7:].sum() == 0   # inclusive box
    both = np.asarray(entity_image(img, [(0, 0, 3, 3), (10, 5, 14, 9)]))
    assert (both[0:4, 0:4] != 0).all() and (both[5:10, 10:15] != 0).all() and both[:, 5:9].sum() == 0
    assert np.asarray(entity_image(img, [])).tolist() == np.asarray(img).tolist()                  # no box: whole
    subj, obj = entity_image(img, [(0, 0, 3, 3)]), entity_image(img, [(15, 0, 19, 9)])
    pred = np.asarray(predicate_image(img, subj, obj))
    assert (pred[0:4, 0:4] != 0).all() and (pred[:, 15:20] != 0).all() and pred[:, 5:14].sum() == 0
    assert np.asarray(predicate_image(img, subj, None)).tolist() == np.asarray(img).tolist()
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    blue = Image.new("RGB", (4, 4), (0, 0, 0))
    blue.paste((0, 0, 255), (2, 0, 4, 4))
    mixed = np.asarray(overlay([red, blue]))
    assert mixed[0, 0].tolist() == [255, 0, 0] and mixed[0, 3].tolist() == [0, 0, 255]         # later wins where lit
