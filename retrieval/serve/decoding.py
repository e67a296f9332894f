"""Decoding uploaded images with bounded memory: one pixel limit, and a pixel budget shared by all
concurrent decodes, so that hostile uploads (many large images at once) queue instead of holding
gigabytes.

A decode holds ``width x height`` units of the budget from before the pixels are decoded until the
model's input tensor is made and the decoded image is dropped. A single image over the budget is
still decoded when nothing else is (the pixel limit bounds it). After a large decode, freed memory
is handed back to the operating system (glibc ``malloc_trim``), so the server returns to its
steady-state size.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any, Callable, Iterator

from ..corpus.images import DEFAULT_MAX_PIXELS, decode_image, image_size

TRIM_ABOVE = 16_000_000  # pixels: decodes larger than this are followed by malloc_trim


class PixelBudget:
    """A counting budget of pixels being decoded at once."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"the decode budget must be positive, got {capacity}")
        self.capacity, self.used = capacity, 0
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: self.used == 0 or self.used + pixels <= self.capacity)
            self.used += pixels
        try:
            yield
        finally:
            with self._cv:
                self.used -= pixels
                self._cv.notify_all()


def _trimmer() -> Callable[[], None]:
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    return lambda: trim(0) and None


class ImageDecoder:
    """``decode(data, preprocess)`` -> the model's input tensor, within the pixel limit and budget."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, budget_pixels: int | None = None):
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        self.max_pixels = max_pixels
        self.budget = PixelBudget(budget_pixels or 2 * max_pixels)
        self._trim = _trimmer()

    def decode(self, data: bytes, preprocess: Callable[[Any], Any]) -> Any:
        """Raises ItemError for unreadable data or an image over the pixel limit."""
        w, h = image_size(data)
        if w * h > self.max_pixels:
            from ..errors import ItemError

            raise ItemError("pixels", f"{w}x{h} pixels exceeds the limit of {self.max_pixels}")
        with self.budget.hold(w * h):
            img, _ = decode_image(data, self.max_pixels)
            tensor = preprocess(img)
            del img
        if w * h > TRIM_ABOVE:
            self._trim()
        return tensor
