"""Metadata straight to Arrow: rows given as a pyarrow Table or as dicts are stored alike, checked
alike, and found alike by keyword (the full-text texts computed column-wise)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval import add_embeddings, build_from_embeddings, open_index
from retrieval.store.layout import shard_files
from retrieval.store.fts import MAX_TEXT, _text, row_texts
from retrieval.store.rows import rows_table
from tests.conftest import unit_vectors

D = 16
MODEL = {"arch": "synthetic", "embed_dim": D}


def _reference_texts(rows: list[dict], columns) -> list[str]:
    """The per-row definition row_texts computes column-wise."""
    out = []
    for r in rows:
        parts = []
        for c in columns:
            if c == "caption" and any(x for x in (r.get("captions") or [])):
                parts.append(_text([x or "" for x in r["captions"]]))
            elif r.get(c) is not None:
                parts.append(_text(r.get(c)))
        out.append("\n".join(p for p in parts if p)[:MAX_TEXT])
    return out


def test_row_texts_equal_the_per_row_definition_on_nulls_lists_and_slices():
    rows = [{"caption": "a dog", "captions": ["x", None, "y"], "tag": "red", "n": 1.5},
            {"caption": "", "captions": [], "tag": None, "n": None},      # nothing: an empty document
            {"caption": None, "captions": None, "tag": "blue", "n": 3.0},
            {"caption": "d", "captions": [""], "tag": "", "n": 4.0},
            {"caption": "é" * (MAX_TEXT + 10), "captions": None, "tag": "t", "n": None}]
    table = pa.Table.from_pylist(rows)
    for columns in (("caption",), ("caption", "tag"), ("tag", "caption", "n"), ("captions", "missing")):
        assert row_texts(table, columns) == _reference_texts(rows, columns), columns
        assert row_texts(table.slice(1, 3), columns) == _reference_texts(rows[1:4], columns), columns
    assert len(row_texts(table, ("caption", "tag"))[4]) == MAX_TEXT


def test_rows_given_as_dicts_keep_columns_only_later_rows_have():
    t = rows_table([{"key": "a"}, {"key": "b", "year": 2001}], 2)
    assert t.column_names == ["key", "year"] and t.column("year").to_pylist() == [None, 2001]


@pytest.mark.parametrize("table,msg", [
    (pa.table({"k": ["a", "b"]}), "no 'key' column"),
    (pa.table({"key": [1, 2]}), "must hold strings, got int64"),
    (pa.table({"key": ["a", None]}), "row 1: key must be a non-empty string"),
    (pa.table({"key": ["", "b"]}), "row 0: key must be a non-empty string"),
    (pa.table({"key": ["a", "b", "a"]}), "row 2: key 'a' is not unique"),
    (pa.table({"key": ["a"]}), "1 metadata rows for 3 embeddings"),
])
def test_a_bad_table_is_refused_naming_the_row(table, msg):
    n = 3 if table.num_rows == 1 else table.num_rows
    with pytest.raises(ValueError, match=msg):
        rows_table(table, n)


def test_a_table_that_does_not_fit_the_folders_columns_is_refused():
    base = pa.schema([("key", pa.string()), ("year", pa.int64())])
    assert rows_table(pa.table({"key": ["a"], "year": [2001.0]}), 1, base).schema.field("year").type == pa.int64()
    with pytest.raises(ValueError, match="do not fit the folder's columns"):
        rows_table(pa.table({"key": ["a"], "year": ["soon"]}), 1, base)


def test_build_and_add_take_a_table_and_store_what_dicts_store(tmp_path):
    n = 40
    img, txt = unit_vectors(n, D, 1), unit_vectors(n, D, 2)
    dicts = [{"key": f"k{i}", "caption": f"photo {i} of a {'cat' if i % 2 else 'dog'}", "year": 2000 + i}
             for i in range(n)]
    build_from_embeddings(tmp_path / "dicts", img, txt, MODEL, dicts, index_key="Flat", bias_bank=None)
    build_from_embeddings(tmp_path / "table", img, txt, MODEL, pa.Table.from_pylist(dicts), index_key="Flat",
                          bias_bank=None)
    stored = {name: pq.read_table(tmp_path / name / shard_files(0)["metadata"]) for name in ("dicts", "table")}
    assert stored["dicts"].equals(stored["table"]) and stored["table"].column_names == ["key", "caption", "year"]
    more = pa.table({"key": ["k3", "new"], "caption": ["a red kite", "a blue kite"], "year": [1999, 2030]})
    for name in ("dicts", "table"):
        r = add_embeddings(tmp_path / name, unit_vectors(2, D, 5), unit_vectors(2, D, 6),
                           more if name == "table" else more.to_pylist())
        assert (r.added, r.replaced) == (1, 1)
        idx = open_index(tmp_path / name)
        _, ids = idx.keyword_search("kite", k=5)
        assert sorted(r["key"] for r in idx.metadata(ids[0][ids[0] >= 0])) == ["k3", "new"]
        _, ids = idx.keyword_search("dog", k=50)
        assert (ids[0] >= 0).sum() == n // 2                    # k3 was a cat: the 20 dogs stay
        _, ids = idx.keyword_search("kite", k=5, where="year >= 2030")
        assert [r["key"] for r in idx.metadata(ids[0][ids[0] >= 0])] == ["new"]
