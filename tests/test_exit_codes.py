"""`raymem study`'s exit codes (docs/python-api.md): 0 ok, 1 failed trials, 2 bad input,
3 a full store, 130 interrupted; one test each, around a study whose running is faked."""

import errno
import types

import duckdb
import pytest

import raymem.study as study_module
from raymem.cli import main
from raymem.errors import ConfigError
from raymem.store import Store
from raymem.sweep import StudyInterrupted


@pytest.fixture
def study(monkeypatch, tmp_path):
    """A planned study of one trial; set `running` to what run_plan does."""
    results = tmp_path / "results"
    trial = types.SimpleNamespace(trial_id="finetune-abc", label=lambda: "finetune-abc finetune t m seed=1")
    plan = types.SimpleNamespace(store=Store(str(results)), n_trials=lambda: 1, up_to_date=lambda: False,
                                 db_path=results / "raymem.duckdb", trials=[trial])
    fake = types.SimpleNamespace(plan=plan, trial=trial, running=lambda: [])
    monkeypatch.setattr("raymem.config.load_study",
                        lambda file, overrides: types.SimpleNamespace(study="s", bin_width=0.1))
    monkeypatch.setattr(study_module, "make_plan", lambda s: plan)

    def run_plan(plan, **options):
        results.mkdir(exist_ok=True)
        duckdb.connect(str(plan.db_path)).close()  # an ingested database, of no table
        return fake.running()
    monkeypatch.setattr(study_module, "run_plan", run_plan)
    return fake


def test_0_when_every_trial_finished(study, capsys):
    assert main(["study", "s.yaml"]) == 0
    assert "study s finished" in capsys.readouterr().out


def test_1_when_trials_failed(study, capsys):
    study.running = lambda: [study.trial]
    assert main(["study", "s.yaml"]) == 1
    assert "1 trial(s) failed" in capsys.readouterr().err


def test_2_for_bad_input(monkeypatch, capsys):
    def bad(file, overrides):
        raise ConfigError("s.yaml: seeds: a seed is given twice")
    monkeypatch.setattr("raymem.config.load_study", bad)
    assert main(["study", "s.yaml"]) == 2
    assert capsys.readouterr().err == "raymem: error: s.yaml: seeds: a seed is given twice\n"


def test_3_when_the_store_is_full(study, capsys):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device")
    study.running = full
    assert main(["study", "s.yaml"]) == 3
    assert capsys.readouterr().err.count("disk full") == 1


def test_130_when_interrupted(study, capsys):
    def interrupted():
        raise StudyInterrupted("SIGTERM")
    study.running = interrupted
    assert main(["study", "s.yaml"]) == 130
    assert "stopped (SIGTERM)" in capsys.readouterr().err


def test_130_when_interrupted_while_planning(monkeypatch, capsys):
    def ctrl_c(study):
        raise KeyboardInterrupt
    monkeypatch.setattr("raymem.config.load_study",
                        lambda file, overrides: types.SimpleNamespace(study="s", bin_width=0.1))
    monkeypatch.setattr(study_module, "make_plan", ctrl_c)
    assert main(["study", "s.yaml"]) == 130
    assert capsys.readouterr().err == "raymem: stopped\n"
