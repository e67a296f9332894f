"""Helpers shared by the command modules: parameter types that refuse bad values in one line
(exit 2), size parsing, option groups."""
from __future__ import annotations

import math
from typing import Optional

import click

from ..classify.inputs import check_template

DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


def parse_size(text: str) -> int:
    """Parse '4GB', '512MiB', '1e9' into bytes (ValueError when it is not a size)."""
    t = text.strip().upper().replace("IB", "B")
    for suffix, mult in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10), ("B", 1)):
        if t.endswith(suffix):
            value = float(t[: -len(suffix)]) * mult
            break
    else:
        value = float(t)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a size")
    return int(value)


class Size(click.ParamType):
    """A positive byte size such as 4GB, 512MiB or 1e9."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            n = parse_size(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a size such as 4GB or 512MB", param, ctx)
        if n <= 0:
            self.fail(f"must be positive, got {value!r}", param, ctx)
        return n


class Count(click.ParamType):
    """An integer of at least ``minimum`` (1 by default: 'must be positive')."""

    name = "integer"

    def __init__(self, minimum: int = 1, maximum: Optional[int] = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        try:
            n = value if isinstance(value, int) else int(str(value), 10)
        except ValueError:
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if n < self.minimum:
            self.fail(f"must be positive, got {n}" if self.minimum == 1 else f"must be at least {self.minimum}, got {n}",
                      param, ctx)
        if self.maximum is not None and n > self.maximum:
            self.fail(f"must be at most {self.maximum}, got {n}", param, ctx)
        return n


class Finite(click.ParamType):
    """A finite float in [minimum, maximum] (NaN and infinities refused)."""

    name = "float"

    def __init__(self, minimum: Optional[float] = None, maximum: Optional[float] = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"must be a finite number, got {value!r}", param, ctx)
        if (self.minimum is not None and x < self.minimum) or (self.maximum is not None and x > self.maximum):
            lo = "-inf" if self.minimum is None else self.minimum
            hi = "inf" if self.maximum is None else self.maximum
            self.fail(f"must be in [{lo}, {hi}], got {x}", param, ctx)
        return x


class Template(click.ParamType):
    name = "template"

    def convert(self, value, param, ctx):
        try:
            return check_template(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


POSITIVE = Count(1)
NON_NEGATIVE = Count(0)


def with_options(options):
    """Apply a list of click options to a command (shared option groups)."""
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco
