"""The localisation suite end to end on a local Ray: counterfactual memorisation, the five
localisation techniques with M-CoG, and the control setup, on a 2-layer masked-LM.

One small study runs twice (the second run must find everything done); the tests read
the DuckDB database it builds and check its rows against the plan, its values against
what each technique can produce, and that every query and localisation chart works on it.
"""

import contextlib
import io
import math
import sys
import time

import numpy as np
import polars as pl
import pytest
import ray
import yaml

from results_db import assert_same_database, fetch, fetch_frame, table_counts
import raymem.study
from raymem.cli import main
from raymem.config import load_study
from raymem.localise.summary import m_cog
from raymem.localise.swapping import layer_scores_from_windows
from raymem.queries import list_queries, query
from raymem.study import make_plan
from raymem.sweep import STAGE_MODULES

pytestmark = pytest.mark.ray

TASK, AUX = "tweet_sentiment", "tweet_polarity"
N_LABELS = 3  # tweet_sentiment: negative / neutral / positive
L = 2  # layers of tiny_mlm
SUBSAMPLE = {"train": 48, "validation": 16, "test": 24}
N_MODELS = 2
TECHNIQUES = ["centroids", "gradients", "probing", "retraining", "swapping"]
PAIRS = ["", "1-2"]  # the studied pair, and the control setup's planted pair (the only one for L=2)
WINDOWS = [(1, 1), (1, 2), (2, 2)]  # L(L+1)/2 contiguous windows


class _Tee(io.StringIO):
    """Keeps what the study prints and still shows it (pytest -s)."""

    def write(self, s):
        sys.__stdout__.write(s)
        return super().write(s)


@pytest.fixture(scope="module")
def study_run(tiny_mlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("localise")
    study = {
        "study": "loc-e2e", "results": str(root / "results"), "models": [str(tiny_mlm)],
        "tasks": [TASK], "seeds": [1], "subsample": SUBSAMPLE,
        # tiny PreCog, so that the PreCog queries have their table too
        "precog": {"k": [1], "max_length": 32, "splits": ["test"],
                   "actors": {"min_size": 1, "max_size": 1}},
        # 40 cheap epochs (a few seconds a model): the noisy model fits its noisy labels, so
        # the techniques see a memorised checkpoint rather than a majority-class predictor
        "finetune": {"variants": ["clean", "noisy"], "epochs": 40, "lr": 3e-3, "batch_size": 8,
                     "max_length": 32},
        "counterfactual": {"enabled": True, "n_models": N_MODELS, "epochs": 20, "lr": None},  # finetune.lr
        "localise": {"enabled": True, "techniques": TECHNIQUES, "retrain_epochs": 1,
                     "retrain_batch_size": 16, "retrain_lr": 5e-4, "probe_seeds": [1],
                     "probe_epochs": 5,
                     "control": {"enabled": True, "auxiliary_task": AUX, "epochs": 20}},
        "ray": {"num_cpus": 2},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    fresh = root / "fresh.yaml"  # the same study in a results folder of its own
    fresh.write_text(yaml.safe_dump({**study, "results": str(root / "fresh")}))
    logs, seconds, ray_started, db_mtimes, statuses = [], [], [], [], []
    db = root / "results" / "raymem.duckdb"
    run_in_driver = raymem.study._run_in_driver

    def status_then_run(store, trial, compute, record=True):
        """`raymem status` while the study runs: from the first run's first summary step."""
        if trial.stage == "counterfactual-summary" and not statuses:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                main(["status", str(path)])
            statuses.append(out.getvalue())
        return run_in_driver(store, trial, compute, record)
    try:
        for path in (path, path, fresh):  # the second run: every trial is already done
            out = _Tee()
            start = time.time()
            with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as patch:
                patch.setattr(raymem.study, "_run_in_driver", status_then_run)
                code = main(["study", str(path)])
            seconds.append(time.time() - start)
            logs.append((code, out.getvalue()))
            ray_started.append(ray.is_initialized())
            ray.shutdown()
            db_mtimes.append(db.stat().st_mtime_ns)
            if len(logs) == 1:
                first = table_counts(db)
    finally:
        ray.shutdown()
    print(f"\nlocalise e2e: first run {seconds[0]:.0f}s, rerun {seconds[1]:.0f}s", file=sys.__stdout__)
    path = root / "study.yaml"
    plan = make_plan(load_study(path), log=lambda *_: None)
    return {"codes": tuple(c for c, _ in logs), "logs": [o for _, o in logs], "db": db,
            "first": first, "root": root, "plan": plan, "ray_started": ray_started, "db_mtimes": db_mtimes,
            "status_during_run": statuses[0]}


def test_study_succeeds_twice(study_run):
    assert study_run["codes"] == (0, 0, 0), study_run["logs"]


def test_status_while_the_study_runs(study_run):
    # taken as the counterfactual summary started, in the driver, while the sweep ran on
    out = study_run["status_during_run"]
    total = len(study_run["plan"].trials)
    done = int(out.split(": ")[1].split(" of ")[0])
    assert 0 < done < total and f" of {total} trials done" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and "stage" not in line}
    # stage: trials, done, failed, started, pending, median seconds
    assert rows["counterfactual"][:3] == [str(N_MODELS), str(N_MODELS), "0"]  # its subset models
    assert rows["counterfactual-summary"][:3] == ["1", "0", "0"]  # this step itself


def test_the_same_study_run_again_gives_the_same_tables(study_run):
    # A fresh run of the same study in another results folder: every table equal, floats
    # bitwise, but for when rows were written, how long trials took and how they ran.
    root = study_run["root"]
    assert_same_database(root / "fresh" / "raymem.duckdb", study_run["db"],
                         {"created_at", "wall_seconds", "attempts", "resumed_from_epoch", "epochs_trained"})


def test_every_trial_ran_once_and_ok(study_run):
    db, plan = study_run["db"], study_run["plan"]
    # every trial that runs as a task (Tune trials, hidden states included, and PreCog) leaves
    # exactly one run row; examples and summary steps do not
    expected = {t.trial_id for t in plan.trials if t.stage in {*STAGE_MODULES, "precog"}}
    rows = fetch(db, "SELECT trial_id, status, error FROM runs")
    assert sorted(r[0] for r in rows) == sorted(expected)
    assert [r for r in rows if r[1] != "ok"] == []
    # 1 precog + 2 finetune + N_MODELS subset models + 3 control models (noisy, clean and the
    # frozen one that gradients and probing read in the control setup)
    # + 2 pairs x (hidden states, swapping, 2 retraining trials (one per start layer, 3
    # windows in all), gradients, probing, centroids)
    starts = len({s for s, _ in WINDOWS})
    assert len(rows) == 1 + 2 + N_MODELS + 3 + len(PAIRS) * (5 + starts)
    stages = dict(fetch(db, "SELECT stage, COUNT(*) FROM runs GROUP BY stage"))
    assert stages == {"precog": 1, "finetune": 2, "counterfactual": N_MODELS, "control": 3,
                      "hidden": len(PAIRS), "localise": len(PAIRS) * (4 + starts)}


def test_finetune_predictions_per_checkpoint(study_run):
    db = study_run["db"]
    # each fine-tuning trial predicts train + eval split at "final", and at "memorised" too
    # if it reached the F1 threshold; the runs table says which did
    memorised = fetch(db, "SELECT COUNT(*) FROM runs "
                          "WHERE stage = 'finetune' AND memorised_epoch IS NOT NULL")
    per_checkpoint = SUBSAMPLE["train"] + SUBSAMPLE["test"]
    assert study_run["first"]["predictions"] == per_checkpoint * (2 + memorised[0][0])


def test_examples_hold_task_and_auxiliary_task(study_run):
    rows = dict(fetch(study_run["db"], "SELECT task, COUNT(*) FROM examples GROUP BY task"))
    assert rows == {TASK: sum(SUBSAMPLE.values()), AUX: sum(SUBSAMPLE.values())}


def test_counterfactual_one_row_per_train_example(study_run):
    db = study_run["db"]
    counts = study_run["first"]
    assert counts["counterfactual"] == SUBSAMPLE["train"]
    assert counts["subset_predictions"] == SUBSAMPLE["train"] * N_MODELS
    missing = fetch(db, f"""
        SELECT COUNT(*) FROM examples e ANTI JOIN counterfactual c USING (task, model, example_id)
        WHERE e.split = 'train' AND e.task = '{TASK}'""")[0][0]
    assert missing == 0
    assert fetch(db, "SELECT DISTINCT task FROM counterfactual") == [(TASK,)]
    assert fetch(db, f"SELECT COUNT(*) FROM counterfactual WHERE n_in + n_out <> {N_MODELS}")[0][0] == 0
    bad = fetch(db, """SELECT COUNT(*) FROM counterfactual
                      WHERE (mem IS NOT NULL AND (isnan(mem) OR mem < -1 OR mem > 1))
                         OR (gen IS NOT NULL AND (isnan(gen) OR gen < 0 OR gen > 1))""")[0][0]
    assert bad == 0
    # mem is defined exactly where some subset models trained on the example and some did not
    undefined = fetch(db, "SELECT COUNT(*) FROM counterfactual "
                          "WHERE (mem IS NULL) <> (n_in = 0 OR n_out = 0)")
    assert undefined[0][0] == 0
    assert fetch(db, "SELECT COUNT(*) FROM counterfactual WHERE mem IS NOT NULL")[0][0] > 0


def test_layer_scores_per_technique_and_pair(study_run):
    db = study_run["db"]
    rows = fetch(db, """SELECT pair, technique, LIST(layer ORDER BY layer), COUNT(*)
                       FROM layer_scores GROUP BY pair, technique ORDER BY pair, technique""")
    assert rows == [(pair, t, list(range(1, L + 1)), L) for pair in PAIRS for t in TECHNIQUES]
    assert fetch(db, "SELECT DISTINCT task, seed FROM layer_scores") == [(TASK, 1)]
    assert fetch(db, "SELECT COUNT(*) FROM layer_scores WHERE NOT isfinite(score) OR score < 0")[0][0] == 0
    sums = fetch(db, """SELECT pair, SUM(score) FROM layer_scores WHERE technique = 'gradients'
                       GROUP BY pair ORDER BY pair""")
    assert [p for p, _ in sums] == PAIRS
    for _, total in sums:
        assert total == pytest.approx(1.0, abs=1e-6)
    # centroid scores are shares of crossings: they sum to 1, or to 0 when nothing crossed
    for _, total in fetch(db, """SELECT pair, SUM(score) FROM layer_scores WHERE technique = 'centroids'
                                GROUP BY pair"""):
        assert total == pytest.approx(1.0) or total == 0


def test_window_scores_for_swapping_and_retraining(study_run):
    db = study_run["db"]
    rows = fetch(db, """SELECT pair, technique,
                              LIST([window_start, window_end] ORDER BY window_start, window_end)
                       FROM window_scores GROUP BY pair, technique ORDER BY pair, technique""")
    windows = [[s, e] for s, e in WINDOWS]
    assert rows == [(pair, t, windows) for pair in PAIRS for t in ("retraining", "swapping")]
    assert study_run["first"]["window_scores"] == len(PAIRS) * 2 * len(WINDOWS)
    # swapping: accuracies are shares, error = 1 - noisy accuracy
    bad = fetch(db, """SELECT COUNT(*) FROM window_scores WHERE technique = 'swapping' AND NOT (
                          noisy_acc BETWEEN 0 AND 1 AND clean_acc BETWEEN 0 AND 1
                          AND abs(error - (1 - noisy_acc)) < 1e-9)""")[0][0]
    assert bad == 0
    # retraining: one row per window; errors normalised by window (1, L), whose error is 1
    # (NaN throughout when retraining all layers forgot nothing)
    assert study_run["first"]["retrain_windows"] == len(PAIRS) * len(WINDOWS)
    joined = fetch(db, """SELECT w.pair, w.window_start, w.window_end, w.noisy_acc, r.noisy_acc, w.error
                         FROM window_scores w JOIN retrain_windows r
                           USING (task, model, seed, pair, technique, window_start, window_end)
                         WHERE w.technique = 'retraining'""")
    assert len(joined) == len(PAIRS) * len(WINDOWS)
    acc_all = {pair: acc for pair, start, end, acc, *_ in joined if (start, end) == (1, L)}
    for pair, start, end, acc, trial_acc, error in joined:
        assert acc == trial_acc and 0 <= acc <= 1
        if acc_all[pair] == 1:
            assert math.isnan(error)
        else:  # error = 1 - (acc - acc_all) / (1 - acc_all): 1 for window (1, L) itself
            assert error == pytest.approx((1 - acc) / (1 - acc_all[pair]))


def test_window_layer_scores_follow_from_the_windows(study_run):
    """Swapping and retraining layer scores are the windows' errors averaged per window size."""
    db = study_run["db"]
    frame = fetch_frame(db, "SELECT pair, technique, window_start, window_end, error FROM window_scores")
    scores = {(p, t, layer): score for p, t, layer, score in fetch(
        db, "SELECT pair, technique, layer, score FROM layer_scores")}
    for pair in PAIRS:
        for technique in ("retraining", "swapping"):
            windows = frame.filter((pl.col("pair") == pair) & (pl.col("technique") == technique))
            expected = np.nan_to_num(layer_scores_from_windows(windows, L))
            assert [scores[pair, technique, layer] for layer in range(1, L + 1)] == pytest.approx(
                expected.tolist()), (pair, technique)


def test_mcog_one_per_technique_and_pair_matching_layer_scores(study_run):
    db = study_run["db"]
    rows = fetch(db, "SELECT pair, technique, mcog FROM mcog ORDER BY pair, technique")
    assert [(p, t) for p, t, _ in rows] == [(p, t) for p in PAIRS for t in TECHNIQUES]
    scores = {}
    for pair, technique, layer, score in fetch(db, "SELECT pair, technique, layer, score FROM layer_scores"):
        scores.setdefault((pair, technique), {})[layer] = score
    for pair, technique, value in rows:
        expected = m_cog([scores[pair, technique][layer] for layer in range(1, L + 1)])
        if math.isnan(expected):
            assert math.isnan(value), (pair, technique)
        else:
            assert 1 <= value <= L and value == pytest.approx(expected), (pair, technique)


def test_control_accuracy_for_the_planted_pair(study_run):
    rows = fetch(study_run["db"], """
        SELECT pair, technique, planted_start, planted_end, top_layers, hit_at_1, hit_at_2,
               pair_on_top, chance_at_1, chance_at_2, chance_pair_on_top
        FROM control_accuracy ORDER BY technique""")
    assert [r[:4] for r in rows] == [("1-2", t, 1, 2) for t in TECHNIQUES]
    for *_, top, hit1, hit2, on_top, chance1, chance2, chance_on_top in rows:
        assert chance1 == chance2 == pytest.approx(2 / L)
        assert chance_on_top == pytest.approx(1 / math.comb(L, 2))
        # with two layers, the planted pair is every layer: every hit is certain, unless a
        # tie put nothing on top (a technique that placed nothing earns nothing)
        assert sorted(top.split(",")) == ["1", "2"]
        assert (hit1, hit2, on_top) in {(True, 1.0, True), (False, 0.0, False)}


def test_probing_consolidation_events_on_the_studied_pair_only(study_run):
    rows = fetch(study_run["db"], """
        SELECT pair, event, class_from, layer FROM events WHERE technique = 'probing' ORDER BY ALL""")
    assert [r[:3] for r in rows] == [("", "probe_initiation", None), ("", "probe_memorisation", None)]
    assert all(r[3] is None or 0 <= r[3] <= L for r in rows)  # layers 0..L, as the original
    curves = fetch(study_run["db"], "SELECT pair, probe, examples, COUNT(*), MIN(f1), MAX(f1) FROM probe_curves "
                                    "GROUP BY ALL ORDER BY ALL")
    assert [r[:4] for r in curves] == [("", probe, examples, L + 1) for probe in ("noisy_label", "original_label")
                                       for examples in ("clean", "noisy")]
    assert all(0 <= low <= high <= 1 for *_, low, high in curves)


def test_centroid_events(study_run):
    rows = fetch(study_run["db"], """
        SELECT pair, technique, event, class_from, class_to, layer FROM events
        WHERE technique = 'centroids' ORDER BY ALL""")
    per_pair = 2 * N_LABELS * (N_LABELS - 1)  # crossing and initiation per ordered class pair
    assert len(rows) == len(PAIRS) * (per_pair + 2)  # and the two pooled events
    assert {r[0] for r in rows} == set(PAIRS) and {r[1] for r in rows} == {"centroids"}
    assert {r[2] for r in rows} == {"crossing", "initiation"}
    pooled = [r for r in rows if r[3] is None]
    assert sorted((r[0], r[2]) for r in pooled) == [(p, e) for p in sorted(PAIRS) for e in ("crossing", "initiation")]
    for *_, c_from, c_to, layer in rows:
        assert (c_from is None and c_to is None) or (c_from != c_to and {c_from, c_to} <= set(range(N_LABELS)))
        assert layer is None or 1 <= layer <= L  # the model's layers, not the embeddings


def test_every_query_runs(study_run):
    db = study_run["db"]
    # the neuron queries read the neuron stage's tables (tests/test_neuron_queries.py)
    names = [name for name, _ in list_queries() if not name.startswith("neuron_")]
    localisation = {"counterfactual_auroc", "mcog_by_task", "layer_profile", "window_heatmap",
                    "technique_agreement", "depth_vs_generalisation", "control_accuracy"}
    assert localisation <= set(names)
    results = {name: query(name, db) for name in names}
    for name in localisation - {"technique_agreement"}:  # agreement needs two tasks to rank
        assert results[name].height > 0, name
    profile = results["layer_profile"]
    assert profile.height == len(TECHNIQUES) * L  # the studied pair only, not the control setup
    for technique, group in profile.group_by("technique"):
        total = group["score"].drop_nulls().sum()
        assert total == pytest.approx(1.0, abs=1e-3) or group["score"].null_count() == L, technique
    assert results["window_heatmap"].height == 2 * len(WINDOWS)
    assert set(results["mcog_by_task"]["technique"]) == {*TECHNIQUES, "mean"}
    assert results["control_accuracy"].height == len(TECHNIQUES)


@pytest.mark.parametrize("name", ["localisation", "windows", "mcog", "control", "counterfactual"])
def test_localisation_charts(study_run, tmp_path, name, capsys):
    assert main(["chart", name, "--db", str(study_run["db"]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    html = (tmp_path / f"{name}.html").read_text()
    assert "cdn.jsdelivr" not in html  # self-contained
    # the study itself drew them too
    assert (study_run["root"] / "results" / "charts" / f"{name}.png").is_file()


def test_rerun_adds_no_rows_and_skips_everything(study_run):
    db = study_run["db"]
    assert table_counts(db) == study_run["first"]
    keys = {"runs": "trial_id",
            "counterfactual": "task, model, example_id",
            "layer_scores": "task, model, seed, pair, technique, layer",
            "window_scores": "task, model, seed, pair, technique, window_start, window_end",
            "mcog": "task, model, seed, pair, technique",
            "control_accuracy": "task, model, seed, pair, technique",
            "events": "task, model, seed, pair, class_from, class_to, event",
            "predictions": "task, model, seed, variant, checkpoint, example_id"}
    for table, key in keys.items():
        dupes = fetch(db, f"SELECT COUNT(*) FROM "
                          f"(SELECT {key} FROM {table} GROUP BY ALL HAVING COUNT(*) > 1)")
        assert dupes[0][0] == 0, table
    first, second, _ = study_run["logs"]
    assert "[hidden]" in first and "[ingest]" in first and "[charts]" in first
    # one progress line for the study's one sweep, not Tune's configuration dump per trial
    n_tune = sum(t.stage in ("finetune", "counterfactual", "control", "hidden", "localise")
                 for t in study_run["plan"].trials)
    assert f"[study] {n_tune}/{n_tune} done, 0 failed, 0 running, 0 pending" in first
    assert "started with configuration" not in first
    # answered from the store: no Ray started, nothing ingested or charted again
    n = study_run["plan"].n_trials()
    assert f"[study] all {n} trials are done and {db} holds them: nothing to run" in second
    assert study_run["ray_started"][:2] == [True, False]
    assert not any(f"[{step}]" in second for step in ("precog", "finetune", "hidden", "ingest", "charts"))
    assert study_run["db_mtimes"][1] == study_run["db_mtimes"][0]
    assert "Accuracy by PreCog bin" in second  # the headline tables still print


def test_the_report_opens_offline_in_headless_chromium(study_run, tmp_path):
    from browser import open_page

    from raymem.charts import available_charts

    report = study_run["root"] / "results" / "charts" / "report.html"
    assert report.is_file()  # the study wrote it
    assert main(["report", "--db", str(study_run["db"]), "--out", str(tmp_path), "--title", "e2e"]) == 0
    page = open_page(tmp_path / "report.html")
    assert page["errors"] == [] and page["requests"] == []
    charts = available_charts(study_run["db"])
    assert {"precog_accuracy_by_bin", "localisation", "windows", "mcog", "counterfactual"} <= set(charts)
    # every chart rendered as an image, and each has its PNG beside the page
    assert [alt for alt, _ in page["images"]] == charts
    assert all(width > 300 for _, width in page["images"])
    assert all((tmp_path / f"{name}.png").is_file() for name in charts)
    assert page["headings"][0] == "e2e"
    assert "Memorisation centre of gravity (M-CoG) per task and technique" in page["headings"]
    assert "Control setup: does each technique find the planted layers?" in page["headings"]
    assert "95% bootstrap intervals" in page["headings"]  # the counterfactual AUROC's, at least
    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html and "FROM layer_scores" in html  # the queries are on the page


def test_the_report_of_a_study_file_uses_its_database_and_name(study_run, tmp_path, capsys):
    assert main(["report", "--study", str(study_run["root"] / "study.yaml"), "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert f"<h1>{study_run['plan'].study.study}</h1>" in html  # the study's name heads it
    assert (tmp_path / "counterfactual.png").is_file() and "FROM counterfactual c" in html
    assert main(["report", "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "no results database" in capsys.readouterr().err
