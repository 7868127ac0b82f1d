"""Named SQL questions: queries/NAME.sql run read-only against the results database.

Each file starts with comment lines: the first says what question it answers; a line
`-- params: name=default, ...` declares DuckDB named parameters (`$name`) and defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb
import polars as pl

from raymem.errors import ConfigError

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


def load_query(name: str) -> tuple[str, dict[str, float | str]]:
    path = queries_dir() / f"{name}.sql"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not path.is_file():
        known = ", ".join(n for n, _ in list_queries())
        raise ConfigError(f"unknown query {name!r}; known queries: {known}")
    sql = path.read_text()
    defaults: dict[str, float | str] = {}
    for line in _header(sql):
        if line.startswith("params:"):
            for item in line[len("params:"):].split(","):
                key, _, value = item.strip().partition("=")
                defaults[key] = _number(value)
    return sql, defaults


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def query(name: str, db: str | Path | None = None, **params) -> pl.DataFrame:
    """Run queries/NAME.sql with its default parameters overridden by `params`."""
    sql, defaults = load_query(name)
    unknown = set(params) - set(defaults)
    if unknown:
        raise ConfigError(f"query {name}: unknown parameter(s) {sorted(unknown)}; "
                          f"it takes {sorted(defaults) or 'none'}")
    db_path = Path(db) if db else DEFAULT_DB
    if not db_path.is_file():
        raise ConfigError(f"no results database at {db_path}; run a study first (raymem study FILE)")
    con = duckdb.connect(str(db_path), read_only=True)  # queries can never change results
    try:
        return con.sql(sql, params={**defaults, **params} or None).pl()
    except duckdb.Error as exc:
        raise ConfigError(f"query {name}: {exc}") from exc
    finally:
        con.close()
