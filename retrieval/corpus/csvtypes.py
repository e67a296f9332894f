"""Column types of a CSV/TSV manifest, inferred from every value as pyarrow's and DuckDB's CSV readers
do: int64, float64, bool, date32, timestamp, else string. Pure functions of the values.

A column is the first type in ``ORDER`` that every non-empty value parses as (a mix falls back to
the next, and to string at the end); an empty field is a null in a typed column and stays ``""`` in
a string one. The same parsers convert the values when rows are read, so inference and conversion
cannot disagree. Timestamps are ISO 8601; a column of values that all carry a UTC offset is stored
in UTC, a mix of zoned and naive values stays a string.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Callable, Iterable, Optional

import pyarrow as pa

_INT = re.compile(r"[+-]?\d{1,19}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)


def _int(v: str) -> int:
    if not _INT.fullmatch(v):
        raise ValueError(v)
    n = int(v)
    if not -2**63 <= n < 2**63:
        raise ValueError(v)
    return n


def _float(v: str) -> float:
    if not _FLOAT.fullmatch(v):
        raise ValueError(v)
    return float(v)


def _bool(v: str) -> bool:
    low = v.lower()
    if low not in ("true", "false"):
        raise ValueError(v)
    return low == "true"


def _date(v: str) -> dt.date:
    if not _DATE.fullmatch(v):
        raise ValueError(v)
    return dt.date.fromisoformat(v)


def _timestamp(v: str) -> dt.datetime:
    if len(v) < 10 or not _DATE.fullmatch(v[:10]):
        raise ValueError(v)
    t = dt.datetime.fromisoformat(v)
    if t.tzinfo is not None:
        raise ValueError(v)
    return t


def _timestamp_utc(v: str) -> dt.datetime:
    if len(v) < 10 or not _DATE.fullmatch(v[:10]):
        raise ValueError(v)
    t = dt.datetime.fromisoformat(v)
    if t.tzinfo is None:
        raise ValueError(v)
    return t.astimezone(dt.timezone.utc)


#: (name, arrow type, parser), in the order they are tried
ORDER: list[tuple[str, pa.DataType, Callable[[str], Any]]] = [
    ("int64", pa.int64(), _int), ("float64", pa.float64(), _float), ("bool", pa.bool_(), _bool),
    ("date32", pa.date32(), _date), ("timestamp", pa.timestamp("us"), _timestamp),
    ("timestamp_utc", pa.timestamp("us", tz="UTC"), _timestamp_utc),
]


class TypeGuess:
    """The running type of one column: feed it values, read ``type`` at the end."""

    def __init__(self):
        self.candidates = list(range(len(ORDER)))
        self.seen = False

    def add(self, value: Optional[str]) -> None:
        if value is None or value == "" or not self.candidates:
            return
        self.seen = True
        v = value.strip()
        keep = []
        for c in self.candidates:
            try:
                ORDER[c][2](v)
                keep.append(c)
            except (ValueError, OverflowError):
                pass
        self.candidates = keep

    @property
    def type(self) -> pa.DataType:
        return ORDER[self.candidates[0]][1] if self.seen and self.candidates else pa.string()


def infer_types(rows: Iterable[dict], columns: list[str]) -> dict[str, pa.DataType]:
    """{column: arrow type} from every row (dicts of strings)."""
    guesses = {c: TypeGuess() for c in columns}
    for row in rows:
        for c, g in guesses.items():
            g.add(row.get(c))
    return {c: g.type for c, g in guesses.items()}


def converter(t: pa.DataType) -> Callable[[Optional[str]], Any]:
    """The function turning one CSV field into a value of type ``t`` (empty: None; string: as is)."""
    if pa.types.is_string(t):
        return lambda v: v
    parse = next(p for _, typ, p in ORDER if typ == t)
    return lambda v: None if v is None or v == "" else parse(v.strip())
