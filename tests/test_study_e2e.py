"""End to end on a local Ray: a small study, the database it builds, and a rerun."""

import duckdb
import pytest
import ray
import yaml

import raymem

from results_db import fetch, table_counts
from raymem.cli import main

pytestmark = pytest.mark.ray

SUBSAMPLE = {"train": 48, "validation": 16, "test": 40}
SEEDS = [1]
VARIANTS = ["clean", "noisy"]
K = [1, 5]


@pytest.fixture(scope="module")
def study_run(tiny_mlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    study = {
        "study": "e2e", "results": str(root / "results"), "models": [str(tiny_mlm)],
        "tasks": ["tweet_sentiment"], "seeds": SEEDS, "subsample": SUBSAMPLE,
        "precog": {"k": K, "max_length": 48, "actors": {"min_size": 1, "max_size": 2}},
        "finetune": {"variants": VARIANTS, "epochs": 3, "lr": 1e-3, "batch_size": 16,
                     "max_length": 48},
        "ray": {"num_cpus": 2},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    try:
        result = raymem.load_study(path).run()  # from Python, as a notebook would
        db = root / "results" / "raymem.duckdb"
        snapshot = table_counts(db)
        second = main(["study", str(path)])  # a rerun, on the command line: every trial is already done
    finally:
        ray.shutdown()
    return {"codes": (result.exit_code, second), "db": db, "first": snapshot, "root": root, "result": result}


def test_study_succeeds_twice(study_run):
    assert study_run["codes"] == (0, 0)


def test_row_counts_equal_the_plan(study_run):
    counts = study_run["first"]
    n_examples = sum(SUBSAMPLE.values())
    assert counts["examples"] == n_examples
    assert counts["precog"] == SUBSAMPLE["test"] * len(K)  # precog scores the eval split
    n_trials = len(SEEDS) * len(VARIANTS)
    assert counts["runs"] == 1 + n_trials  # one precog run and the finetune trials
    # each finetune trial predicts train + eval split at "final", and again at "memorised"
    # if it reached the F1 threshold; the runs table says which did.
    memorised = fetch(study_run["db"], "SELECT COUNT(*) FROM runs WHERE memorised_epoch IS NOT NULL")[0][0]
    per_checkpoint = SUBSAMPLE["train"] + SUBSAMPLE["test"]
    assert counts["predictions"] == per_checkpoint * (n_trials + memorised)


def test_rerun_adds_no_rows(study_run):
    assert table_counts(study_run["db"]) == study_run["first"]
    dupes = fetch(study_run["db"], """
        SELECT COUNT(*) FROM (SELECT example_id, seed, variant, checkpoint, split, COUNT(*) n
                              FROM predictions GROUP BY ALL HAVING n > 1)""")[0][0]
    assert dupes == 0


def test_every_k_and_provenance_present(study_run):
    db = study_run["db"]
    assert [r[0] for r in fetch(db, "SELECT DISTINCT k FROM precog ORDER BY k")] == K
    assert fetch(db, "SELECT COUNT(*) FROM precog WHERE score < 0 OR score > 1")[0][0] == 0
    studies = fetch(db, "SELECT DISTINCT study, raymem_version FROM predictions")
    assert studies == [("e2e", "0.1.0")]
    statuses = fetch(db, "SELECT DISTINCT status FROM runs")
    assert statuses == [("ok",)]


def test_noisy_variant_trains_on_perturbed_labels(study_run):
    db = study_run["db"]
    rows = fetch(db, """
        SELECT pr.variant, BOOL_AND(pr.label = e.label), BOOL_AND(pr.label = e.original_label)
        FROM predictions pr JOIN examples e USING (task, model, example_id)
        WHERE pr.split = 'train' GROUP BY pr.variant ORDER BY pr.variant""")
    assert rows == [("clean", False, True), ("noisy", True, False)]


def test_queries_and_charts_answer(study_run, capsys):
    db = str(study_run["db"])
    assert main(["query", "precog_accuracy_by_bin", "--db", db]) == 0
    assert "ALL" in capsys.readouterr().out
    charts = study_run["root"] / "results" / "charts"
    for name in ("precog_accuracy_by_bin", "precog_planted"):
        assert (charts / f"{name}.png").stat().st_size > 1000
        html = (charts / f"{name}.html").read_text()
        assert "cdn.jsdelivr" not in html  # self-contained


def test_tune_keeps_json_and_csv_results_but_no_tensorboard_writers(study_run):
    # One tensorboardX writer per trial stayed in the driver until it exited.
    tune_dir = study_run["root"] / "results" / "tune"
    trial_dirs = {p.parent for p in tune_dir.rglob("result.json")}
    assert len(trial_dirs) == len(SEEDS) * len(VARIANTS)
    assert all((d / "progress.csv").is_file() for d in trial_dirs)
    assert not list(tune_dir.rglob("events.out.tfevents*"))


def test_status_reads_the_store(study_run, capsys):
    capsys.readouterr()
    assert main(["status", str(study_run["root"] / "study.yaml")]) == 0
    out = capsys.readouterr().out
    n = 1 + 1 + len(SEEDS) * len(VARIANTS)  # examples, precog, fine-tuning
    assert f"{n} of {n} trials done" in out
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                         for line in out.splitlines() if line.startswith("| "))}
    assert rows["stage"][:3] == ["stage", "trials", "done"]
    assert rows["finetune"][1:3] == [str(len(SEEDS) * len(VARIANTS))] * 2


def test_the_python_api_ran_the_study_and_reads_its_database(study_run):
    assert study_run["result"].database == study_run["db"] and study_run["result"].ok
    con = raymem.results(study_run["result"])
    try:
        n = con.sql("SELECT COUNT(*) AS n FROM predictions").pl()["n"][0]
        assert n == table_counts(study_run["db"])["predictions"] > 0
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM predictions")
    finally:
        con.close()
    for source in (study_run["root"] / "study.yaml", study_run["root"] / "results", study_run["db"]):
        con = raymem.results(source)  # a study file, its results folder, the database itself
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == table_counts(study_run["db"])["runs"]
        con.close()
