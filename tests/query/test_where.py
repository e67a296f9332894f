"""``where`` is one boolean expression over the user's columns, checked on the parse tree: allowed
forms work, the attacks of the adversarial pass are refused in one line, and one slow filter does not
hold up the others of the same index."""
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.query.filters import FilterError, Filters

N = 200


@pytest.fixture(scope="module")
def filters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("where")
    (folder / "metadata").mkdir()
    table = pa.table({"key": [f"k{i}" for i in range(N)], "caption": [f"a dog number {i}" for i in range(N)],
                      "year": list(range(1900, 1900 + N)), "captions": [["x", f"y{i}"] for i in range(N)],
                      "json": ['{"a": %d}' % (i % 3) for i in range(N)], "_source": ["s"] * N})
    pq.write_table(table, folder / "metadata" / "m.parquet")
    return Filters(folder, [{"files": {"metadata": "metadata/m.parquet"}}], np.array([N]))


@pytest.mark.parametrize("where,count", [
    ("year >= 2020", 80), ("caption LIKE '%number 1_'", 10), ("caption ILIKE 'A DOG%' AND year < 1910", 10),
    ("year BETWEEN 1900 AND 1904", 5), ("year IN (1900, 1901, 3000)", 2), ("year NOT IN (1900)", N - 1),
    ("caption IS NOT NULL AND NOT (year > 1900)", 1), ("lower(caption) = 'a dog number 3'", 1),
    ("CAST(year AS VARCHAR) = '1950'", 1), ("year % 10 = 0", 20), ("'y7' IN captions", 1),
    ("list_contains(captions, 'x')", N), ("json_extract_string(json, '$.a') = '1'", 67), ("json->>'$.a' = '2'", 66),
    ("CASE WHEN year > 2000 THEN true ELSE false END", 99), ("coalesce(year, 0) > 2098", 1),
    ("regexp_matches(caption, 'number 1[0-9]$')", 10), ("starts_with(caption, 'a dog') AND length(caption) = 14", 10),
    ("YEAR > 2090", 9), ("year > 1950 -- a comment", 149), ("make_date(year, 1, 1) >= DATE '2090-01-01'", 10),
])
def test_allowed_expressions_select_the_right_rows(filters, where, count):
    assert filters.selection(where).total == count


@pytest.mark.parametrize("where,msg", [
    ("length(repeat(caption, 300000)) > 0", "function 'repeat' is not allowed"),   # the memory bomb
    ("lpad(caption, 1000000000, 'x') = ''", "function 'lpad' is not allowed"),
    ("length(replace(replace(caption, 'a', caption), 'a', caption)) > 0", "function 'replace' is not allowed"),
    ("length(printf('%1000000000d', 1)) > 0", "function 'printf' is not allowed"),
    ("len(range(1000000000)) > 0", "function 'range' is not allowed"),
    ("1=1) ORDER BY random() LIMIT 3 --", "bad where expression"),                  # splices
    ("true) OR (true", "bad where expression"),
    ("year > 1 FROM meta", "one boolean expression"),
    ("true; DROP TABLE meta", "bad where expression"),
    ("__retrieval_row < 5", "unknown column '__retrieval_row'"),                     # internal columns
    ("__retrieval_shard = 0", "unknown column"), ("_source = 's'", "unknown column '_source'"),
    ("meta.year > 1", "unknown column 'meta.year'"),
    ("year > (SELECT 1)", "subqueries are not allowed"), ("EXISTS (SELECT 1)", "subqueries"),
    ("count(*) > 1", "not allowed"), ("sum(year) OVER () > 1", "window functions"),
    ("caption = ?", "parameters"), ("year > 1 AS x", "no alias"),
    ("list_transform(captions, x -> x) IS NULL", "not allowed"),
    ("year::INTEGER[] IS NULL", "scalar types only"),
    ("read_text('/etc/passwd') IS NULL", "function 'read_text' is not allowed"),
    ("NOT " * 499 + "true", "nested too deeply"),
    ("year > " + "1" * 2001, "at most 2000 characters"),
    ("nosuch > 1", "unknown column 'nosuch'"), ("", "empty"),
])
def test_attacks_and_mistakes_are_one_line_errors(filters, where, msg):
    with pytest.raises(FilterError, match=msg) as e:
        filters.selection(where)
    assert "\n" not in str(e.value)


def test_the_checked_tree_is_what_runs(filters):
    """The statement that runs parses to our own SELECT with the checked expression as its WHERE: what DuckDB would read past
    the expression (ORDER BY, LIMIT, another column) never reaches it."""
    assert filters.selection("year >= 1900").total == N
    with pytest.raises(FilterError):
        filters.selection("year >= 1900 LIMIT 3")


def test_a_slow_filter_does_not_hold_up_the_others(tmp_path):
    n = 400_000
    (tmp_path / "metadata").mkdir()
    pq.write_table(pa.table({"key": [str(i) for i in range(n)], "caption": ["ab" * 40] * n}),
                   tmp_path / "metadata" / "m.parquet")
    f = Filters(tmp_path, [{"files": {"metadata": "metadata/m.parquet"}}], np.array([n]))
    f.columns()  # load the table once
    heavy = "regexp_matches(" + " || ".join(["caption"] * 40) + ", '(a|b)*c')"
    t0 = time.perf_counter()
    f.selection("caption = 'x'")
    light_alone = time.perf_counter() - t0
    done = {}

    def run_heavy():
        t = time.perf_counter()
        f.selection(heavy)
        done["heavy"] = time.perf_counter() - t

    th = threading.Thread(target=run_heavy)
    th.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    assert f.selection("caption = 'y'").total == 0
    light = time.perf_counter() - t0
    th.join()
    assert done["heavy"] > 1.0, done            # the heavy filter really was slow
    assert light < max(0.5, 0.5 * done["heavy"], 5 * light_alone), (light, done)


def test_the_metadata_is_a_view_and_no_other_file_is_readable(filters, tmp_path):
    """Nothing is copied (the filter reads the shards' Parquet files through a view), and with external
    access off only those files are readable: even SQL that bypassed the expression check could not
    read another file or write one."""
    import duckdb

    filters.selection("year > 1950")
    cur = filters._cursor()
    assert cur.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'meta'").fetchone() == (
        "VIEW",)
    assert cur.execute("SELECT count(*) FROM meta").fetchone() == (N,)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    for sql in (f"SELECT * FROM read_parquet('{other}')", "SELECT * FROM read_csv('/etc/passwd')",
                f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'", "SET enable_external_access = true",
                "SET allowed_paths = ['/']"):
        with pytest.raises(duckdb.Error):
            cur.execute(sql).fetchall()
    assert not (tmp_path / "out.csv").exists()


def test_warm_connects_in_the_background_and_leaves_errors_to_the_first_filter(tmp_path):
    folder = tmp_path / "w"
    (folder / "metadata").mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a", "b", "c"], "year": [1, 2, 3]}), folder / "metadata" / "m.parquet")
    warm = Filters(folder, [{"files": {"metadata": "metadata/m.parquet"}}], np.array([3]))
    warm.warm()
    for _ in range(200):   # connected without any filter asked
        if warm._con is not None and warm._template is not None:
            break
        time.sleep(0.01)
    assert warm._con is not None and warm._template is not None
    assert warm.selection("year >= 2").total == 2 and warm.columns() == ["key", "year"]
    broken = Filters(folder, [{"files": {"metadata": "metadata/missing.parquet"}}], np.array([3]))
    broken.warm()
    time.sleep(0.2)
    with pytest.raises(Exception, match="cannot read the metadata"):
        broken.selection("year >= 2")
