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


def contents(db: Path, volatile: set[str]) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table: its columns less `volatile`, and all its rows in a fixed order."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        tables = con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()
        for (table,) in tables:
            columns = [c for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position", [table]).fetchall() if c not in volatile]
            select = ", ".join(f'"{c}"' for c in columns)
            out[table] = (columns, con.execute(f'SELECT {select} FROM "{table}" ORDER BY ALL').fetchall())
        return out
    finally:
        con.close()


def assert_same_database(db: Path, reference: Path, volatile: set[str]) -> None:
    """Same tables, columns and rows (floats bitwise), but for the `volatile` columns."""
    import pytest

    got, want = contents(db, volatile), contents(reference, volatile)
    assert sorted(got) == sorted(want)
    for table in want:
        assert got[table][0] == want[table][0], f"{table}: columns differ"
        assert len(got[table][1]) == len(want[table][1]), f"{table}: row counts differ"
        if got[table][1] != want[table][1]:
            columns = got[table][0]
            same = lambda a, b: a == b or (a != a and b != b)  # noqa: E731 (NaN equals NaN here)
            diffs = [{c: (a, b) for c, a, b in zip(columns, x, y) if not same(a, b)}
                     for x, y in zip(got[table][1], want[table][1]) if x != y]
            diffs = [d for d in diffs if d]
            if diffs:
                pytest.fail(f"{table}: {len(diffs)} rows differ from the reference run, e.g. {diffs[:3]}")
