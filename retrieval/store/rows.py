"""Metadata rows as one pyarrow Table: what every path that writes rows hands the writer.

``rows_table`` takes what a caller has (a pyarrow Table, metadata dicts, or nothing: keys "0".."n-1")
and returns one Table in the schema the folder stores, its key column checked (non-empty strings,
all different). Columns are handled whole by Arrow: no per-row Python dicts from here to the
Parquet file and the full-text index. ValueError naming the first bad row.
"""
from __future__ import annotations

from typing import Sequence, Union

STRING_COLUMNS = ("key", "image_path", "caption")

Rows = Union[Sequence[dict], "pa.Table", None]  # noqa: F821 (pyarrow is imported lazily)


def rows_table(rows: Rows, n: int, base=None):
    """``rows`` (a pyarrow Table, dicts with a ``key``, or None) as a Table of ``n`` rows in the
    folder's schema: ``key``/``image_path``/``caption`` strings, a column of nulls a string column,
    the columns ``base`` (the folder's schema) already has keep their type."""
    import pyarrow as pa

    if rows is None:
        return default_rows(n)
    if isinstance(rows, pa.Table):
        table = rows
    elif isinstance(rows, (str, bytes, dict)) or not isinstance(rows, Sequence):
        raise ValueError(f"metadata rows must be a list of dicts or a pyarrow Table, got {type(rows).__name__}")
    else:
        table = _from_dicts(rows)
    if table.num_rows != n:
        raise ValueError(f"{table.num_rows} metadata rows for {n} embeddings")
    check_key_column(table)
    return fit_schema(table, base)


def fit_schema(table, base=None):
    """A checked rows Table cast to the stored schema (``table_schema``) given the folder's ``base``."""
    import pyarrow as pa

    try:
        return table.cast(table_schema(table.schema, base))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"metadata rows do not fit the folder's columns: {str(e).splitlines()[0][:200]}") from None


def default_rows(n: int):
    """Rows keyed by their number ("0".."n-1"), with empty paths and captions."""
    import pyarrow as pa

    blank = pa.repeat("", n)
    return pa.table({"key": number_keys(0, n), "image_path": blank, "caption": blank})


def number_keys(first: int, n: int):
    """The keys "first".."first + n - 1" as a string array (rows keyed by their number)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(np.arange(first, first + n)), pa.string())


def _from_dicts(rows: Sequence[dict]):
    """A Table of metadata dicts: every column any row has, each column's type inferred from all of
    its values (rows without it are nulls there)."""
    import pyarrow as pa

    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"metadata row {i} is a {type(r).__name__}, not a dict with a 'key'")
    missing = object()
    for i, key in enumerate(r.get("key", missing) for r in rows):
        if key is missing:
            raise ValueError(f"metadata row {i} has no 'key'")
        if type(key) is not str or not key:
            raise ValueError(f"metadata row {i}: key must be a non-empty string, got {key!r}"[:200])
    names = dict.fromkeys(c for r in rows for c in r)
    try:
        return pa.table({c: pa.array([r.get(c) for r in rows]) for c in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"metadata rows mix value types in one column: {str(e).splitlines()[0][:200]}") from None


def check_key_column(table) -> None:
    """ValueError unless ``table`` has a ``key`` column of non-empty strings, all different."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "key" not in table.column_names:
        raise ValueError("metadata rows have no 'key' column")
    keys = table.column("key")
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        raise ValueError(f"metadata 'key' column must hold strings, got {keys.type}")
    bad = pc.or_kleene(pc.is_null(keys), pc.equal(pc.utf8_length(keys), 0))
    if pc.any(bad).as_py():
        i = pc.index(pc.fill_null(bad, True), True).as_py()
        raise ValueError(f"metadata row {i}: key must be a non-empty string, got {keys[i].as_py()!r}")
    if pc.count_distinct(keys).as_py() != len(keys):
        seen: set = set()
        for i, key in enumerate(keys.to_pylist()):  # only to name the first repeat
            if key in seen:
                raise ValueError(f"metadata row {i}: key {key!r} is not unique"[:200])
            seen.add(key)


def table_schema(inferred, base=None):
    """The stored schema of rows whose Arrow schema is ``inferred`` (see ``rows_table``)."""
    import pyarrow as pa

    known = {f.name: f.type for f in (base or [])}
    fields = []
    for f in inferred:
        if f.name in STRING_COLUMNS:
            t = pa.string()
        elif f.name in known and not pa.types.is_null(known[f.name]):
            t = known[f.name]
        elif pa.types.is_null(f.type):
            t = pa.string()
        else:
            t = f.type
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def column_keys(table) -> list[str]:
    """The rows' keys, in order."""
    return table.column("key").to_pylist()

