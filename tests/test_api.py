"""raymem from Python: a light `import raymem`, load_study with overrides, plan, results.
(A study run through the API: tests/test_study_e2e.py.)"""

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import raymem
from raymem.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "studies" / "demo.yaml"


def test_import_raymem_loads_no_heavy_library():
    code = ("import sys, raymem; print(sorted(m for m in ('ray', 'torch', 'duckdb', 'polars', 'transformers', "
            "'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(raymem.load_study) and callable(raymem.results) and callable(raymem.query)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        raymem.nothing  # noqa: B018


def test_load_study_merges_keyword_overrides_into_sections():
    study = raymem.load_study(DEMO, seeds=[4, 5], finetune={"epochs": 3}, **{"search.enabled": True})
    s = study.settings
    assert s.seeds == [4, 5] and s.finetune.epochs == 3 and s.search.enabled
    assert s.finetune.lr == 0.001 and s.finetune.batch_size == 16  # the file's other finetune keys stay
    assert study.database == Path("results").resolve() / "raymem.duckdb"  # the file says results: results


def test_bad_overrides_name_the_field():
    with pytest.raises(ConfigError, match=r"finetune\.epochs"):
        raymem.load_study(DEMO, finetune={"epochs": 0})
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        raymem.load_study(DEMO, finetune={"epoch": 3})


def test_plan_counts_the_trials_offline():
    plan = raymem.load_study(DEMO, seeds=[1]).plan()
    assert plan["study"] == "demo" and plan["total"]["trials"] == sum(r["trials"] for r in plan["stages"].values())
    assert plan["stages"]["finetune"]["trials"] == 2 * 2  # two tasks, clean and noisy, one seed


def test_results_is_read_only_and_names_a_missing_database(tmp_path):
    db = tmp_path / "raymem.duckdb"
    with pytest.raises(ConfigError, match="no results database"):
        raymem.results(tmp_path)
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE runs AS SELECT 'ok' AS status")
    con.close()
    con = raymem.results(tmp_path)  # the results folder
    try:
        assert con.execute("SELECT status FROM runs").fetchall() == [("ok",)]
        for statement in ("INSERT INTO runs VALUES ('failed')", "CREATE TABLE x (a INT)", "DROP TABLE runs"):
            with pytest.raises(duckdb.Error, match="read-only"):
                con.execute(statement)
    finally:
        con.close()
