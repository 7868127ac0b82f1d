"""Read-only SQL on a results database (raymem.duckdb) for the tests: one connection per
call, closed again, so no test holds the file open while a study writes it."""

from pathlib import Path

import duckdb
import polars as pl


def fetch(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def fetch_frame(db: Path, sql: str) -> pl.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(sql).pl()
    finally:
        con.close()


def table_counts(db: Path) -> dict[str, int]:
    """Table name -> number of rows, for every table."""
    tables = [t for (t,) in fetch(db, "SELECT table_name FROM information_schema.tables")]
    return {t: fetch(db, f'SELECT COUNT(*) FROM "{t}"')[0][0] for t in tables}
