"""``where`` filters: SQL boolean expressions over the metadata columns, evaluated by DuckDB into a
row selection (LanceDB's ``where("...")`` convention; DESIGN §10).

The expression may come from an HTTP client, and DuckDB runs SQL with the process's rights, so:
the metadata is a view over the shards' Parquet files (nothing is copied: the first filter reads
only the columns it names), DuckDB's ``allowed_paths`` lists exactly those files, then external
access (every other file, network, extensions) is switched off and the configuration locked. The expression is parsed on its own and
its parse tree checked (``query.where``: one boolean expression over the user's columns, allowed
node kinds and functions only, none that grows strings or lists without bound); the statement that
runs must parse to our own SELECT with exactly that checked tree as its WHERE. Each
filter runs on its thread's own cursor, so a slow one does not hold up the others of the same index; one
running longer than ``TIMEOUT_S`` is interrupted. Results are cached by expression (LRU, bounded in
bytes).
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import IndexFolderError
from .selection import Selection
from .where import WhereError, expression, same_tree

SHARD, ROW = "__retrieval_shard", "__retrieval_row"
TIMEOUT_S = 10.0
MAX_CHARS = 2000
CACHE_BYTES = 256 << 20
log = logging.getLogger("retrieval.where")


class FilterError(ValueError):
    """A ``where`` expression that cannot be evaluated (bad syntax, unknown column, not allowed)."""


class Filters:
    def __init__(self, folder: Path, shards: list[dict], rows: np.ndarray):
        self.folder, self.shards, self.rows = Path(folder), shards, rows
        self._con = None
        self._columns: list[str] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._template: Optional[dict] = None  # the parse tree of our SELECT, whose WHERE a checked expression fills
        self._cache: OrderedDict[str, Selection] = OrderedDict()

    def _connect(self):
        import duckdb

        con = duckdb.connect(config={"threads": 2, "memory_limit": "1GB"})
        files = [str((self.folder / s["files"]["metadata"]).absolute()) for s in self.shards]
        listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"  # a view takes no parameters
        try:
            con.execute("CREATE TABLE files AS SELECT * FROM (VALUES " +
                        ", ".join(f"(?, {i})" for i in range(len(files))) + ") t(filename, pos)", files)
            con.execute(f"CREATE VIEW meta AS SELECT m.* EXCLUDE (filename, file_row_number), f.pos AS {SHARD}, "
                        f"m.file_row_number AS {ROW} FROM read_parquet({listed}, filename=true, file_row_number=true, "
                        f"union_by_name=true) m JOIN files f USING (filename)")
            con.execute(f"SET allowed_paths = {listed}")  # these files, and nothing else, once access is off
        except duckdb.Error as e:  # the served folder's own files: unavailable, not the request's fault
            con.close()
            raise IndexFolderError(f"cannot read the metadata of {self.folder} for a where filter: "
                                   f"{str(e).splitlines()[0][:200]}") from None
        for setting in ("enable_external_access = false", "autoinstall_known_extensions = false",
                        "autoload_known_extensions = false", "lock_configuration = true"):
            con.execute(f"SET {setting}")
        names = [r[0] for r in con.execute("DESCRIBE meta").fetchall()]
        self._columns = [n for n in names if n not in (SHARD, ROW, "_source")]
        return con

    def _cursor(self):
        """This thread's cursor on the table (created once per thread): filters of different threads
        run side by side, and an interrupt stops only its own thread's filter."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                self._ready()
                cur = self._local.cursor = self._con.cursor()
        return cur

    def _ready(self) -> None:
        """The connection and our SELECT's parse tree (under the lock)."""
        if self._con is None:
            self._con = self._connect()
        if self._template is None:
            cur = self._con.cursor()
            self._template = json.loads(cur.execute("SELECT json_serialize_sql(?)", [
                f"SELECT {SHARD}, {ROW} FROM meta WHERE true"]).fetchone()[0])
            cur.close()

    def warm(self) -> None:
        """Connect in a background thread (DuckDB's database, the view, the locked settings: ~30 ms),
        so that the first filter does not wait for it; a failure is left for that filter to report."""
        def run() -> None:
            try:
                with self._lock:
                    self._ready()
            except Exception as e:  # noqa: BLE001 - the first filter raises it properly
                log.debug("warming the where filters of %s failed: %s", self.folder, e)

        threading.Thread(target=run, name="where-warm", daemon=True).start()

    def columns(self) -> list[str]:
        """The metadata columns a filter may name."""
        self._cursor()
        return list(self._columns)

    def _statement(self, cur, where: str) -> str:
        """The SQL that runs, checked on its parse tree: the expression parsed alone must pass the
        allow-list (``query.where``), and the statement around it must parse to our own SELECT with
        exactly that tree as its WHERE (both parsed in one call)."""
        if len(where) > MAX_CHARS:
            raise FilterError(f"a where expression is at most {MAX_CHARS} characters, got {len(where)}")
        sql = f"SELECT {SHARD}, {ROW} FROM meta WHERE (\n{where}\n)"
        alone, full = cur.execute("SELECT json_serialize_sql(?), json_serialize_sql(?)", [f"SELECT\n{where}\n", sql]).fetchone()
        try:
            expr = expression(json.loads(alone), self._columns)
            stmt = json.loads(full)
        except WhereError as e:
            raise FilterError(str(e)) from None
        except RecursionError:
            raise FilterError("the where expression is nested too deeply") from None
        if not same_tree(stmt, self._template, expr):
            raise FilterError("a where expression must be one boolean expression over the metadata columns")
        return sql

    def selection(self, where: str) -> Selection:
        """The rows matching ``where`` (FilterError when it cannot be evaluated)."""
        import duckdb

        where = where.strip()
        if not where:
            raise FilterError("the where expression is empty")
        with self._lock:
            if where in self._cache:
                self._cache.move_to_end(where)
                return self._cache[where]
        cur = self._cursor()
        timer = threading.Timer(TIMEOUT_S, cur.interrupt)
        timer.start()
        try:
            got = cur.execute(self._statement(cur, where)).fetchnumpy()
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
        with self._lock:
            self._cache[where] = sel
            while len(self._cache) * int(self.rows.sum()) > CACHE_BYTES and len(self._cache) > 1:
                self._cache.popitem(last=False)
        return sel
