"""ComCLIP's sub-images, as its released code draws them (``helper_function.py``): never crops.

- ``black_outside(image, box)``: the full canvas with everything outside ``box`` painted black;
- ``overlay(images)``: the images pasted in turn onto a black canvas, each where its own pixels are
  not black (luminance > 0);
- ``entity_image(image, boxes)``: one entity's sub-image, the overlay of its boxes' images, or the
  whole image when no box matched;
- ``predicate_image(image, subject, object)``: the overlay of the object's and the subject's
  sub-images when both matched boxes, else the whole image.
Boxes are (left, top, right, bottom) in pixels, as GRiT writes them.
"""
from __future__ import annotations

from typing import Optional, Sequence

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]


def black_outside(image: Image.Image, box: Box) -> Image.Image:
    image = image.convert("RGB")
    out = Image.new("RGB", image.size, "black")
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).rectangle([(box[0], box[1]), (box[2], box[3])], fill=255)
    out.paste(image, mask=mask)
    return out


def overlay(images: Sequence[Image.Image]) -> Image.Image:
    base = Image.new("RGB", images[0].size, (0, 0, 0))
    for im in images:
        im = im.convert("RGB")
        base.paste(im, (0, 0), mask=im.convert("L").point(lambda x: 255 if x > 0 else 0, mode="1"))
    return base


def entity_image(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """The sub-image of an entity matched to ``boxes`` (the whole image when there is none)."""
    if not boxes:
        return image.convert("RGB")
    return overlay([black_outside(image, b) for b in boxes])


def predicate_image(image: Image.Image, subject: Optional[Image.Image], obj: Optional[Image.Image]) -> Image.Image:
    """The predicate's sub-image: the object's and the subject's sub-images overlaid when both were
    matched (``None`` marks an entity without a box), else the whole image."""
    if subject is None or obj is None:
        return image.convert("RGB")
    return overlay([obj, subject])
