"""The results database with its analyses: the shards' tables (raymem/store.py), and the
tables derived from them in the same build, so a reader never sees one without the other.

    checks             can the study's numbers be believed? (raymem/checks.py)
    intervals          bootstrap intervals of the headline numbers (raymem/intervals.py)
    precog_regression  PreCog's effect beyond length and rarity (raymem/regression.py)

The store knows files and tables only; this layer sits above it and is what a study and
`raymem ingest` call.
"""

from __future__ import annotations

from pathlib import Path

from raymem.checks import create_checks_table
from raymem.intervals import create_intervals_table
from raymem.regression import create_precog_regression_table
from raymem.store import Store, ingest


def derive_tables(con) -> dict[str, int]:
    """Build every derived table the open database has the inputs for; their row counts."""
    counts = {"checks": create_checks_table(con), "intervals": create_intervals_table(con)}
    regression = create_precog_regression_table(con)
    if regression is not None:
        counts["precog_regression"] = regression
    return counts


def build_database(store: Store, db_path: Path, trial_ids: set[str] | None = None, log=print) -> dict[str, int]:
    """Rebuild the DuckDB database from the shards (all, or the given trials') with its
    derived tables; return the row count of every table."""
    return ingest(store, db_path, trial_ids, log, derive=derive_tables)
