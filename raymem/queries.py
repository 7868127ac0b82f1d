"""Named SQL questions: queries/NAME.sql run read-only against the results database.

Each file starts with comment lines: the first says what question it answers; a line
`-- params: name=default [range], ...` declares DuckDB named parameters (`$name`), their
defaults (whose type, number or text, is the parameter's type) and, optionally, the range
a number must lie in, in interval notation: `bin_width=0.1 (0, 1]`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from raymem.errors import ConfigError, did_you_mean

DEFAULT_DB = Path("results") / "raymem.duckdb"


def queries_dir() -> Path:
    return Path(os.environ.get("RAYMEM_QUERIES", Path(__file__).resolve().parent.parent / "queries"))


def _header(sql: str) -> list[str]:
    lines = []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[2:].strip())
    return lines


def list_queries() -> list[tuple[str, str]]:
    """(name, one-line description) of every query file."""
    return [(p.stem, (_header(p.read_text()) or [""])[0]) for p in sorted(queries_dir().glob("*.sql"))]


@dataclass(frozen=True)
class Param:
    default: float | str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True

    def interval(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, query_name: str, name: str, value) -> float | str:
        """The value as the parameter's type, or one ConfigError saying what was expected."""
        if isinstance(self.default, str):
            return str(value)
        expected = f"query {query_name}: {name} must be a number in {self.interval()}, got {value!r}"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(expected) from None
        below = number <= self.low if self.low_open else number < self.low
        above = number >= self.high if self.high_open else number > self.high
        if math.isnan(number) or below or above:
            raise ConfigError(expected)
        return number


PARAM = re.compile(r"(\w+)=([^\s,(\[]*)\s*(?:([(\[])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([)\]]))?")

# table -> what a study file needs to produce it (for "this study did not run ...")
PRODUCED_BY = {
    "precog": "precog: {enabled: true}",
    "precog_regression": "precog: {enabled: true}` and `finetune: {enabled: true}",
    "predictions": "finetune: {enabled: true}",
    "counterfactual": "counterfactual: {enabled: true}",
    "subset_predictions": "counterfactual: {enabled: true}",
    **{t: "localise: {enabled: true}" for t in ("layer_scores", "window_scores", "mcog", "events",
                                                 "retrain_windows", "probe_curves")},
    "control_accuracy": "localise: {enabled: true, control: {enabled: true}}",
    **{t: "neurons: {enabled: true}" for t in ("neuron_scores", "neuron_layers", "neuron_summary",
                                                "neuron_deletion", "neuron_planted")},
}


def load_query(name: str) -> tuple[str, dict[str, Param]]:
    path = queries_dir() / f"{name}.sql"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not path.is_file():
        names = [n for n, _ in list_queries()]
        raise ConfigError(f"unknown query {name!r}{did_you_mean(name, names)}; known queries: {', '.join(names)}")
    sql = path.read_text()
    params: dict[str, Param] = {}
    for line in _header(sql):
        if line.startswith("params:"):
            for m in PARAM.finditer(line[len("params:"):]):
                key, value, low_bracket, low, high, high_bracket = m.groups()
                bounds = {} if not low_bracket else {
                    "low": float(low), "high": float(high),
                    "low_open": low_bracket == "(", "high_open": high_bracket == ")"}
                params[key] = Param(_number(value), **bounds)
    return sql, params


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _missing_table(name: str, exc: duckdb.Error) -> ConfigError | None:
    """'Table with name X does not exist' -> which study setting makes X."""
    missing = re.search(r"Table with name (\w+) does not exist", str(exc))
    if not missing:
        return None
    table = missing.group(1)
    needs = PRODUCED_BY.get(table)
    hint = f": add `{needs}` to the study file" if needs else ""
    return ConfigError(f"query {name}: this study's database has no {table!r} table; the study did not "
                       f"produce it{hint}")


def query(name: str, db: str | Path | None = None, **params) -> pl.DataFrame:
    """Run queries/NAME.sql with its default parameters overridden by `params`, each checked
    against the type and range its header declares."""
    sql, declared = load_query(name)
    unknown = set(params) - set(declared)
    if unknown:
        first = sorted(unknown)[0]
        raise ConfigError(f"query {name}: unknown parameter(s) {sorted(unknown)}{did_you_mean(first, declared)}; "
                          f"it takes {sorted(declared) or 'none'}")
    values = {k: p.default for k, p in declared.items()}
    values |= {k: declared[k].check(name, k, v) for k, v in params.items()}
    db_path = Path(db) if db else DEFAULT_DB
    if not db_path.is_file():
        raise ConfigError(f"no results database at {db_path}; run a study first (raymem study FILE)")
    con = duckdb.connect(str(db_path), read_only=True)  # queries can never change results
    try:
        return con.sql(sql, params=values or None).pl()
    except duckdb.Error as exc:
        raise _missing_table(name, exc) or ConfigError(f"query {name}: {exc}") from exc
    finally:
        con.close()


def columns(name: str) -> list[str]:
    """The columns a query returns, read from DuckDB's parse of its final SELECT: no database
    needed. Every output column is a plain column or has an alias (`SELECT *` would not say)."""
    sql, _ = load_query(name)
    con = duckdb.connect()
    try:
        parsed = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    finally:
        con.close()
    if parsed.get("error"):
        raise ConfigError(f"query {name}: {parsed.get('error_message')}")
    node = parsed["statements"][0]["node"]
    while node["type"] == "SET_OPERATION_NODE":  # a UNION's columns are its first part's
        node = node["left"]
    out = []
    for expr in node["select_list"]:
        if not expr.get("alias") and expr.get("class") != "COLUMN_REF":
            raise ConfigError(f"query {name}: an output column without a name; give it an alias (AS name)")
        out.append(expr.get("alias") or expr["column_names"][-1])
    return out


REFERENCE_HEADER = """# Query reference

Every named query in `queries/`, generated from the files themselves (`raymem query
--reference`): what it answers (its header), its parameters and the columns it returns.
Run one with `raymem query NAME [--param name=value]`; from Python, `raymem.query(NAME)`.
"""


def reference() -> str:
    """Markdown: one section per query file, from its header comment and its SELECT."""
    parts = [REFERENCE_HEADER]
    for name, _ in list_queries():
        sql, params = load_query(name)
        header = [line for line in _header(sql) if not line.startswith("params:")]
        parts.append(f"\n## {name}\n\n{header[0]}\n")
        if header[1:]:
            parts.append("\n" + "\n".join(header[1:]) + "\n")
        if params:
            declared = ", ".join(f"`{k}` (default {_shown(p)})" for k, p in params.items())
            parts.append(f"\n**Parameters:** {declared}\n")
        parts.append("\n**Columns:** " + ", ".join(f"`{c}`" for c in columns(name)) + "\n")
    return "".join(parts)


def _shown(param: Param) -> str:
    """A parameter's default, and for a number the range it must lie in, where it has one."""
    if isinstance(param.default, str):
        return f"`{param.default}`"
    bounded = (param.low, param.high) != (-math.inf, math.inf)
    return f"`{param.default:g}`" + (f", in {param.interval()}" if bounded else "")


FORMATS = ("table", "csv", "json", "parquet")


def write_result(frame: pl.DataFrame, fmt: str, out: str | Path | None) -> str | None:
    """A query's result as csv, json (records) or parquet, to `out` (or returned as text;
    parquet needs a file). `table` is the command line's own printing."""
    if fmt not in FORMATS or fmt == "table":
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS[1:])} here, got {fmt!r}")
    if fmt == "parquet":
        if out is None:
            raise ConfigError("--format parquet: give a file with --out FILE")
        frame.write_parquet(out)
        return None
    text = frame.write_csv() if fmt == "csv" else frame.write_json()
    if out is None:
        return text
    Path(out).write_text(text)
    return None
