"""``where`` filters: SQL boolean expressions over the metadata columns, evaluated by DuckDB into a
row selection (LanceDB's ``where("...")`` convention; DESIGN §10).

The expression may come from an HTTP client, and DuckDB runs SQL with the process's rights, so:
the metadata is copied into an in-memory table first, then external access (files, network,
extensions) is switched off and the configuration locked; the expression's parse tree must be a
plain boolean expression over that table (no subquery, no set operation, one statement); memory is
capped and a filter running longer than ``TIMEOUT_S`` is interrupted. Results are cached by
expression (LRU, bounded in bytes).
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .selection import Selection

SHARD, ROW = "__retrieval_shard", "__retrieval_row"
TIMEOUT_S = 10.0
CACHE_BYTES = 256 << 20


class FilterError(ValueError):
    """A ``where`` expression that cannot be evaluated (bad syntax, unknown column, not allowed)."""


def _has_subquery(node) -> bool:
    if isinstance(node, dict):
        if node.get("class") == "SUBQUERY" or node.get("type") == "SUBQUERY":
            return True
        return any(_has_subquery(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_subquery(v) for v in node)
    return False


class Filters:
    def __init__(self, folder: Path, shards: list[dict], rows: np.ndarray):
        self.folder, self.shards, self.rows = Path(folder), shards, rows
        self._con = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Selection] = OrderedDict()

    def _connect(self):
        import duckdb

        con = duckdb.connect(config={"threads": 2, "memory_limit": "2GB"})
        files = [str(self.folder / s["files"]["metadata"]) for s in self.shards]
        con.execute("CREATE TEMP TABLE files AS SELECT * FROM (VALUES " +
                    ", ".join(f"(?, {i})" for i in range(len(files))) + ") t(filename, pos)", files)
        con.execute(f"CREATE TABLE meta AS SELECT m.* EXCLUDE (filename, file_row_number), f.pos AS {SHARD}, "
                    f"m.file_row_number AS {ROW} FROM read_parquet(?, filename=true, file_row_number=true, "
                    f"union_by_name=true) m JOIN files f USING (filename)", [files])
        for setting in ("enable_external_access = false", "autoinstall_known_extensions = false",
                        "autoload_known_extensions = false", "lock_configuration = true"):
            con.execute(f"SET {setting}")
        return con

    def columns(self) -> list[str]:
        with self._lock:
            self._con = self._con or self._connect()
            names = [r[0] for r in self._con.execute("DESCRIBE meta").fetchall()]
        return [n for n in names if n not in (SHARD, ROW)]

    def _check(self, sql: str) -> None:
        out = json.loads(self._con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        if out.get("error"):
            raise FilterError(f"bad where expression: {out.get('error_message', 'syntax error')}")
        statements = out.get("statements") or []
        node = statements[0].get("node", {}) if len(statements) == 1 else {}
        if node.get("type") != "SELECT_NODE" or node.get("where_clause") is None:
            raise FilterError("a where expression must be one boolean expression over the metadata columns")
        if _has_subquery(node):
            raise FilterError("subqueries are not allowed in a where expression")

    def selection(self, where: str) -> Selection:
        """The rows matching ``where`` (FilterError when it cannot be evaluated)."""
        where = where.strip()
        if not where:
            raise FilterError("the where expression is empty")
        with self._lock:
            if where in self._cache:
                self._cache.move_to_end(where)
                return self._cache[where]
            import duckdb

            self._con = self._con or self._connect()
            sql = f"SELECT {SHARD}, {ROW} FROM meta WHERE ({where})"
            timer = threading.Timer(TIMEOUT_S, self._con.interrupt)
            timer.start()
            try:
                self._check(sql)
                got = self._con.execute(sql).fetchnumpy()
            except duckdb.InterruptException:
                raise FilterError(f"the where expression took longer than {TIMEOUT_S:.0f} s") from None
            except duckdb.Error as e:
                raise FilterError(f"bad where expression: {str(e).splitlines()[0][:300]}") from None
            finally:
                timer.cancel()
            masks = [np.zeros(n, bool) for n in self.rows]
            for k in np.unique(got[SHARD]):
                masks[int(k)][got[ROW][got[SHARD] == k]] = True
            sel = Selection(masks, self.rows)
            self._cache[where] = sel
            while len(self._cache) * int(self.rows.sum()) > CACHE_BYTES and len(self._cache) > 1:
                self._cache.popitem(last=False)
            return sel
