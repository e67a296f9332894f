"""What a ``where`` filter may be, checked on DuckDB's parse tree (``json_serialize_sql``), pure.

A filter is one boolean expression over the user's metadata columns, nothing else: comparisons,
AND/OR/NOT, IN, BETWEEN, LIKE/ILIKE/GLOB, regular expressions, IS [NOT] NULL, CASE, COALESCE,
casts to scalar types, arithmetic, and the functions in :data:`FUNCTIONS` (date parts, bounded
string functions, list membership, JSON field access). Every function in the list returns a value
no longer than its inputs plus the expression's own text, so a filter cannot grow strings or lists
without bound (``repeat``, ``lpad``, ``replace``, ``printf``, ``range``, ``string_agg`` are out), and
subqueries, aggregates, window functions, lambdas, ``*``, parameters and qualified column names
are refused. The checked tree is what runs: the filter module parses the expression alone (:func:`expression`
checks it) and inside its own ``SELECT ... WHERE (...)``, and runs that statement only when its parse
tree is its own with exactly the checked expression as the WHERE (:func:`same_tree`), so nothing
the user typed reaches the statement around it (``1=1) ORDER BY random() --``, ``true) OR (true``).
"""
from __future__ import annotations

from typing import Any, Iterable

#: node classes and, for each, the node types allowed (None: any type of that class)
NODES: dict[str, Any] = {
    "COLUMN_REF": None, "CONSTANT": None, "COMPARISON": None, "CONJUNCTION": None, "BETWEEN": None,
    "CASE": None, "CAST": None, "COLLATE": None, "FUNCTION": None,
    "OPERATOR": {"OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN", "COMPARE_NOT_IN",
                 "OPERATOR_COALESCE", "OPERATOR_NULLIF"},
}

#: functions (and operators, which DuckDB parses as functions) a filter may call
FUNCTIONS = frozenset({
    # arithmetic, concatenation (linear in the expression's length), LIKE/ILIKE/GLOB and their NOTs
    "+", "-", "*", "/", "//", "%", "||", "concat", "concat_ws",
    "~~", "!~~", "~~*", "!~~*", "~~~", "!~~~", "like_escape", "not_like_escape", "ilike_escape", "not_ilike_escape",
    "regexp_matches", "regexp_full_match",  # RE2: linear time
    # strings that do not grow
    "lower", "upper", "lcase", "ucase", "length", "len", "strlen", "char_length", "character_length",
    "trim", "ltrim", "rtrim", "starts_with", "ends_with", "prefix", "suffix", "contains", "strpos", "instr",
    "position", "substring", "substr", "left", "right", "reverse", "nullif", "ifnull",
    # numbers
    "abs", "round", "floor", "ceil", "ceiling", "sign", "least", "greatest", "isnan", "isinf", "isfinite", "trunc",
    # dates and times (INTERVAL literals parse as to_* calls)
    "year", "month", "day", "hour", "minute", "second", "week", "quarter", "dayofweek", "dayofyear", "isodow",
    "date_part", "datepart", "date_trunc", "datetrunc", "date_diff", "datediff", "date_sub", "datesub",
    "epoch", "epoch_ms", "make_date", "strptime", "try_strptime", "today", "current_date", "now",
    "to_years", "to_months", "to_weeks", "to_days", "to_hours", "to_minutes", "to_seconds",
    "to_milliseconds", "to_microseconds",
    # lists (the ``captions`` column; list literals in IN / contains)
    "list_value", "list_contains", "list_has", "array_contains", "array_has", "list_has_any", "list_has_all",
    "array_length", "list_position",
    # JSON fields (the folder reader's ``json`` column)
    "json_extract_string", "json_extract", "->>", "->", "json_exists", "json_valid",
})

#: types a CAST may target (scalars: a cast cannot build a nested value)
CAST_TYPES = frozenset({
    "BOOLEAN", "BOOL", "TINYINT", "SMALLINT", "INTEGER", "INT", "INT4", "BIGINT", "INT8", "HUGEINT", "UTINYINT",
    "USMALLINT", "UINTEGER", "UBIGINT", "FLOAT", "REAL", "DOUBLE", "DECIMAL", "NUMERIC", "VARCHAR", "TEXT",
    "STRING", "DATE", "TIME", "TIMESTAMP", "DATETIME", "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE", "INTERVAL",
})

_FUNCTION_FIELDS = {"class", "type", "alias", "query_location", "query_location_length", "function_name", "schema",
                    "filter", "order_bys", "distinct", "is_operator", "export_state", "catalog", "arguments",
                    "qualified_name", "is_legacy_function_call"}


class WhereError(ValueError):
    """The expression is not one allowed boolean expression over the columns (reason in the message)."""


def expression(parsed: dict, columns: Iterable[str]) -> dict:
    """The one expression of ``parsed`` (``json_serialize_sql`` of ``SELECT <where>``), checked
    against the rules above and ``columns`` (the user's metadata columns)."""
    if parsed.get("error"):
        raise WhereError(f"bad where expression: {parsed.get('error_message', 'syntax error')}")
    statements = parsed.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    plain = (node.get("type") == "SELECT_NODE" and len(node.get("select_list") or []) == 1
             and (node.get("from_table") or {}).get("type") == "EMPTY" and not node.get("modifiers")
             and node.get("where_clause") is None and not node.get("group_expressions")
             and not node.get("group_sets") and node.get("having") is None and node.get("qualify") is None
             and node.get("sample") is None and not (node.get("cte_map") or {}).get("map"))
    if not plain:
        raise WhereError("a where expression must be one boolean expression over the metadata columns")
    expr = node["select_list"][0]
    if expr.get("alias"):
        raise WhereError("a where expression takes no alias")
    check(expr, {c.lower() for c in columns}, sorted(columns))
    return expr


def _plain(node: Any) -> Any:
    """A parse tree without source positions (the same expression parses alike wherever it stands)."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if k not in ("query_location", "query_location_length")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def same_tree(statement: dict, template: dict, expr: dict) -> bool:
    """Whether ``statement`` (a parsed ``SELECT ... WHERE (<where>)``) is ``template`` (the same SELECT
    parsed with ``WHERE true``) with exactly ``expr`` as its WHERE: nothing of the text reached the
    statement around the expression."""
    if statement.get("error") or len(statement.get("statements") or []) != 1:
        return False
    got = _plain(statement["statements"][0])
    want = _plain(template["statements"][0])
    where = got.get("node", {}).pop("where_clause", None)
    want.get("node", {}).pop("where_clause", None)
    return got == want and where == _plain(expr)


def check(node: Any, allowed: set, names: list, depth: int = 0) -> None:
    """Walk one expression node; WhereError at the first thing not allowed."""
    if depth > 200:
        raise WhereError("the where expression is nested too deeply")
    if isinstance(node, list):
        for v in node:
            check(v, allowed, names, depth + 1)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class")
    if cls is None:  # a container (function argument, CASE branch, type): walk its values
        for v in node.values():
            check(v, allowed, names, depth + 1)
        return
    if cls not in NODES:
        raise WhereError(f"{_what(cls)} not allowed in a where expression")
    types = NODES[cls]
    if types is not None and node.get("type") not in types:
        raise WhereError(f"{node.get('type', cls).lower().replace('_', ' ')} is not allowed in a where expression")
    if cls == "COLUMN_REF":
        parts = node.get("column_names") or []
        if len(parts) != 1 or parts[0].lower() not in allowed:
            raise WhereError(f"unknown column {'.'.join(parts)!r} in where expression; columns: {', '.join(names)}")
        return
    if cls == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if name not in FUNCTIONS or node.get("schema") or node.get("catalog"):
            raise WhereError(f"function {name!r} is not allowed in a where expression (allowed: comparisons, "
                             f"AND/OR/NOT, IN, BETWEEN, LIKE/ILIKE, IS NULL, CASE, casts, date parts and bounded "
                             f"string functions; see the README)")
        if node.get("filter") is not None or node.get("distinct") or (node.get("order_bys") or {}).get("orders") \
                or set(node) - _FUNCTION_FIELDS:
            raise WhereError(f"aggregate use of {name!r} is not allowed in a where expression")
        check(node.get("arguments"), allowed, names, depth + 1)
        return
    if cls == "CAST":
        _cast_type(node.get("type_expr") or {})
        check(node.get("child"), allowed, names, depth + 1)
        return
    for key, v in node.items():
        if key not in ("class", "type"):
            check(v, allowed, names, depth + 1)


def _cast_type(t: dict) -> None:
    name = str(t.get("type_name", "")).upper()
    if name not in CAST_TYPES or t.get("schema") or t.get("catalog") or any(
            isinstance(c, dict) and c.get("class") == "TYPE" for c in t.get("children") or []):
        raise WhereError(f"a cast to {name or 'that type'} is not allowed in a where expression (scalar types only)")


def _what(cls: str) -> str:
    return {"SUBQUERY": "subqueries are", "WINDOW": "window functions are", "STAR": "'*' is",
            "PARAMETER": "parameters are", "LAMBDA": "lambdas are"}.get(cls, f"{cls.lower().replace('_', ' ')} is")
