"""Classification inputs: class lists, labelled-image CSVs, image files and folders."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..corpus.images import IMAGE_EXTENSIONS

IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS)
MAX_CLASS_NAME = 300


def check_classes(names: Sequence[str]) -> list[str]:
    """Stripped class names; ValueError when empty, blank, longer than ``MAX_CLASS_NAME`` or duplicated."""
    out = [str(n).strip() for n in names]
    if not out:
        raise ValueError("no classes given")
    if any(not n for n in out):
        raise ValueError("a class name is empty")
    if any(len(n) > MAX_CLASS_NAME for n in out):
        raise ValueError(f"a class name is at most {MAX_CLASS_NAME} characters")
    seen: set[str] = set()
    dups = sorted({n for n in out if n in seen or seen.add(n)})
    if dups:
        raise ValueError(f"duplicate class names: {', '.join(dups[:5])}")
    return out


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read classes file {path}: {e}") from None
    names = [n for n in (line.strip() for line in lines) if n]
    if not names:
        raise ValueError(f"classes file {path} is empty")
    return check_classes(names)


def read_labels(path: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """(image paths, labels) from a CSV with ``path`` and ``label`` columns (paths relative to the CSV)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read labels file {path}: {e}") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"labels file {path} needs a header with 'path' and 'label' columns and at least one row")
    return [path.parent / r["path"] for r in rows], [str(r["label"]).strip() for r in rows]


def expand_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expanded to their image files (recursive, sorted)."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise ValueError(f"no such image or folder: {p}")
    return out


MAX_TEMPLATE = 300


def check_template(template: str) -> str:
    """A prompt template: exactly one bare ``{}`` (the class name), no other brace, at most
    ``MAX_TEMPLATE`` characters. Format specs (``{:>999999999}``), conversions (``{!r}``), field names and
    literal ``{{``/``}}`` are refused: a template may come from an HTTP client, and ``str.format`` would
    build whatever string the spec asks for."""
    if not isinstance(template, str):
        raise ValueError(f"a template must be a string, got {type(template).__name__}")
    if len(template) > MAX_TEMPLATE:
        raise ValueError(f"a template is at most {MAX_TEMPLATE} characters, got {len(template)}")
    if template.count("{}") != 1 or template.replace("{}", "", 1).count("{") or template.replace("{}", "", 1).count("}"):
        raise ValueError(f"template {template[:80]!r} must contain exactly one bare {{}} for the class name "
                         f"and no other brace")
    return template


def fill_template(template: str, name: str) -> str:
    """The prompt of class ``name`` (``template`` checked by :func:`check_template`; no ``str.format``)."""
    return template.replace("{}", name, 1)
