"""The search stage: candidates, the winner, what later trials record, and a real search."""

import contextlib
import io
import json
from pathlib import Path

import polars as pl
import pytest
import ray
import yaml

from results_db import fetch
from raymem.cli import main
from raymem.config import load_study
from raymem.settings import resolve_settings
from raymem.stages import search
from raymem.store import Store
from raymem.study import make_plan

REPO = Path(__file__).resolve().parent.parent
SPACE = {"lr": [1e-5, 3e-3], "epochs": [2, 3], "batch_size": [16]}


def _params(**extra):
    return {"space": SPACE, "algorithm": "grid", **extra}


def test_grid_is_every_combination_and_random_draws_are_fixed_by_the_seed():
    assert search.n_candidates(_params()) == 4
    assert search.n_candidates(_params(algorithm="random", samples=7)) == 7


def _table(rows):
    keys = ("candidate", "completed", "objective", "memorised_epoch", "error")
    return pl.DataFrame([dict(zip(keys, r)) for r in rows],
                        schema_overrides={"memorised_epoch": pl.Int64, "objective": pl.Float64, "error": pl.Utf8})


def test_the_winner_meets_the_constraint_and_ran_all_its_epochs():
    table = search.choose_winner(_table([
        (0, True, 0.90 - 1, None, None),  # the best validation score, but its noisy model never memorised
        (1, True, 0.70, 5, None),
        (2, False, 0.95, 3, None),  # stopped early by ASHA: its last score is from an early epoch
        (3, True, 0.80, 9, None),   # the winner
        (4, True, 0.80, 4, None),   # as good, but later in the space's order
    ]), "t / m")
    assert table.filter("winner")["candidate"].to_list() == [3]
    assert table["constraint_met"].to_list() == [False, True, True, True, True]


def test_no_winner_where_every_candidate_was_stopped_or_failed():
    with pytest.raises(RuntimeError, match="search t / m: no candidate ran to its end \\(CUDA out of memory\\)"):
        search.choose_winner(_table([(0, False, 0.5, 1, None), (1, False, None, None, "CUDA out of memory")]),
                             "t / m")


def test_later_trials_read_the_winner(tmp_path):
    store = Store(str(tmp_path))
    rows = pl.DataFrame({"candidate": [0, 1], "lr": [1e-5, 3e-3], "epochs": [2, 3], "batch_size": [16, 8],
                         "winner": [False, True]})
    store.write_rows("search", "search", "search-abc", rows, "s")
    assert resolve_settings({"lr": 0.1, "clip": 1.0}, store) == {"lr": 0.1, "clip": 1.0}  # no search: as given
    assert resolve_settings({"clip": 1.0, "search_trial": "search-abc"}, store) == \
        {"lr": 3e-3, "epochs": 3, "batch_size": 8, "clip": 1.0}
    # a key the stage sets itself (counterfactual.epochs) holds
    assert resolve_settings({"epochs": 7, "search_trial": "search-abc"}, store)["epochs"] == 7


def _demo_with(tmp_path, **changes) -> Path:
    study = yaml.safe_load((REPO / "studies" / "demo_localise.yaml").read_text())
    # both tweet tasks (the demo studies one): each is searched on its own
    study.update(results=str(tmp_path / "results"), tasks=["tweet_sentiment", "tweet_polarity"], **changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _ids(plan, *stages):
    return {t.trial_id for t in plan.of_stage(*stages)}


def test_the_search_enters_the_ids_of_what_it_feeds_and_nothing_else(tmp_path):
    quiet = lambda *_: None  # noqa: E731
    off = make_plan(load_study(_demo_with(tmp_path)), log=quiet)
    on = make_plan(load_study(_demo_with(tmp_path, search={"enabled": True})), log=quiet)
    wider = make_plan(load_study(_demo_with(tmp_path, search={"enabled": True, "space": {"lr": [1e-3]}})),
                      log=quiet)
    searches = on.of_stage("search")
    assert sorted(t.params["task"] for t in searches) == ["tweet_polarity", "tweet_sentiment"]
    assert not off.of_stage("search")
    fed = ("finetune", "counterfactual", "control", "localise")
    for plan in (on, wider):
        assert _ids(plan, "examples", "precog") == _ids(off, "examples", "precog")
        assert not _ids(plan, *fed) & _ids(off, *fed)
    assert not _ids(on, "search", *fed) & _ids(wider, "search", *fed)
    by_task = {t.params["task"]: t.trial_id for t in searches}
    for trial in on.of_stage("finetune", "counterfactual", "control"):
        settings = trial.params["settings"]
        assert settings["search_trial"] == by_task[trial.params["task"]]
        assert by_task[trial.params["task"]] in trial.needs
        assert "lr" not in settings and "batch_size" not in settings
        # control.epochs is set in the demo: it holds; the others take the searched epochs
        assert ("epochs" in settings) == (trial.stage == "control")
    for trial in on.of_stage("localise"):
        if trial.params["technique"] == "retraining":  # the searched lr and batch size, its own epochs
            assert trial.params["retrain"]["epochs"] == 2 and "lr" not in trial.params["retrain"]
            assert trial.params["retrain"]["search_trial"] == trial.params["search_trial"]


# -- a real search on a tiny task -------------------------------------------------------
@pytest.fixture(scope="module")
def searched(tiny_mlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    study = {
        "study": "search", "results": str(root / "results"), "models": [str(tiny_mlm)],
        "tasks": ["tweet_sentiment"], "seeds": [1], "subsample": {"train": 48, "validation": 24, "test": 24},
        "precog": {"enabled": False},
        "search": {"enabled": True, "space": SPACE, "grace_period": 1},
        "finetune": {"variants": ["clean", "noisy"], "epochs": 9, "lr": 1.0, "batch_size": 4, "max_length": 48},
        "ray": {"num_cpus": 2},
    }
    path = root / "study.yaml"
    logs = []
    try:
        # the second run adds a seed: its trials are new, the search (on the first seed) is not
        for seeds in ([1], [1, 2]):
            path.write_text(yaml.safe_dump({**study, "seeds": seeds}))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(["study", str(path)]) == 0
            logs.append(out.getvalue())
    finally:
        ray.shutdown()
    return root / "results" / "raymem.duckdb", logs


@pytest.mark.ray
def test_a_search_picks_settings_from_the_space_and_fine_tuning_uses_them(searched):
    db, logs = searched
    rows = fetch(db, """SELECT lr, epochs, batch_size, completed, epochs_run, objective, winner
                              FROM search ORDER BY candidate""")
    assert sorted((r[0], r[1]) for r in rows) == sorted((lr, e) for lr in SPACE["lr"] for e in SPACE["epochs"])
    for lr, epochs, batch_size, completed, epochs_run, objective, winner in rows:
        assert batch_size == 16 and epochs_run <= epochs and completed == (epochs_run == epochs)
    winner = [r for r in rows if r[-1]]
    assert len(winner) == 1
    lr, epochs = winner[0][:2]
    assert winner[0][5] == max(r[5] for r in rows if r[3])
    # the fine-tuning trials trained with the winner, not the finetune block's settings
    final_epochs = fetch(db, "SELECT DISTINCT epoch FROM predictions WHERE checkpoint = 'final'")
    assert final_epochs == [(epochs,)]
    for (params,) in fetch(db, "SELECT params FROM runs WHERE stage = 'finetune'"):
        settings = json.loads(params)["settings"]
        assert "lr" not in settings and settings["search_trial"].startswith("search-")
    assert fetch(db, "SELECT COUNT(*) FROM runs WHERE stage = 'search' AND status = 'ok'") == [(1,)]


@pytest.mark.ray
def test_a_rerun_skips_the_search(searched):
    db, (first, second) = searched
    assert "[search] tweet_sentiment" in first and "4 candidates on the validation split" in first
    assert "already done; chose lr=" in second and "candidates on the validation split" not in second
    assert fetch(db, "SELECT COUNT(*) FROM runs WHERE stage = 'search'") == [(1,)]
    assert fetch(db, "SELECT COUNT(DISTINCT seed) FROM runs WHERE stage = 'finetune'") == [(2,)]
