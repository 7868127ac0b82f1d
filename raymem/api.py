"""raymem from Python (a notebook): load a study, plan it, run it, query its results.

    import raymem

    study = raymem.load_study("studies/demo.yaml", seeds=[1], finetune={"epochs": 5})
    study.plan()                    # trials, compute and storage per stage (as `raymem plan`)
    result = study.run()            # as `raymem study`; result.exit_code, result.database
    con = raymem.results(result)    # a read-only DuckDB connection to its database
    con.sql("SELECT * FROM runs").pl()

docs/python-api.md says more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raymem.config import Study
from raymem.errors import ConfigError


def _dotted(overrides: dict, prefix: str = "") -> dict:
    """Keyword overrides as `--set` keys: a mapping is merged into its section, key by key
    ({"finetune": {"epochs": 5}} -> {"finetune.epochs": 5})."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            flat |= _dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class StudyResult:
    """What `LoadedStudy.run` returns: `raymem study`'s exit code (0 ok, 1 failed trials,
    2 bad input, 3 a full store, 130 interrupted) and the study's database."""
    exit_code: int
    database: Path

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class LoadedStudy:
    """A study file, validated, with the overrides it was loaded with."""

    def __init__(self, path: str | Path, overrides: dict):
        from raymem.config import load_study as load

        self.path, self.overrides = Path(path), _dotted(overrides)
        self.settings: Study = load(self.path, self.overrides)

    def __repr__(self) -> str:
        return f"<raymem study {self.settings.study!r} from {self.path}>"

    @property
    def database(self) -> Path:
        """Where the study's DuckDB database is (or will be)."""
        from raymem.store import Store, database_path

        return database_path(Store(self.settings.results), self.settings.database)

    def plan(self, gpu: str = "A10G", efficiency: float = 0.3) -> dict:
        """What the study will run and cost (as `raymem plan --json` writes it); offline."""
        from raymem.estimate import estimate

        return estimate(self.settings, gpu, efficiency)

    def run(self, verbose: bool = False) -> StudyResult:
        """Run the study as `raymem study` does: what is done is skipped, the terminal shows
        raymem's lines (Ray's own go to the log file it names; `verbose` shows them)."""
        from raymem.cli import exit_code, run_study

        same = ", <the same overrides>" if self.overrides else ""
        resume = f"raymem.load_study({str(self.path)!r}{same}).run()"
        code = exit_code(lambda: run_study(self.settings, verbose, resume))
        return StudyResult(code, self.database)


def load_study(path: str | Path, **overrides) -> LoadedStudy:
    """Read and validate a study file; keyword arguments override its keys (a mapping is
    merged into its section). Bad input raises ConfigError naming the field."""
    return LoadedStudy(path, overrides)


def results(source):
    """A read-only DuckDB connection to a study's database. `source`: a LoadedStudy, a
    StudyResult, a study file (.yaml), a results folder, or the database file itself."""
    import duckdb

    if isinstance(source, (LoadedStudy, StudyResult)):
        db = source.database
    else:
        path = Path(source)
        if path.suffix in (".yaml", ".yml"):
            db = LoadedStudy(path, {}).database
        elif path.is_dir():
            db = path / "raymem.duckdb"
        else:
            db = path
    if not Path(db).is_file():
        raise ConfigError(f"no results database at {db}; run the study first (study.run() or raymem study FILE)")
    return duckdb.connect(str(db), read_only=True)
