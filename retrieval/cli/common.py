"""Helpers shared by the command modules: size parsing, option groups."""
from __future__ import annotations


DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


def parse_size(text: str) -> int:
    """Parse '4GB', '512MiB', '1e9' into bytes."""
    t = text.strip().upper().replace("IB", "B")
    for suffix, mult in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10), ("B", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(float(t))


def with_options(options):
    """Apply a list of click options to a command (shared option groups)."""
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco
