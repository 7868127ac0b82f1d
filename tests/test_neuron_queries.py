"""The neuron stage's tables (raymem/stages/neurons.py `tables`), its queries and check,
against a tiny hand-made results database."""

import duckdb
import numpy as np
import polars as pl
import pytest

from raymem.checks import neuron_recall
from raymem.queries import query
from raymem.stages.neurons import tables

P = {"task": "t", "model": "m", "seed": 1}


def _trial_tables(target, scores, planted=None):
    deletion = pl.DataFrame({"technique": ["a", "a", "random", "random"], "percent": [0.0, 1.0, 0.0, 1.0],
                             "n_units": [0, 2, 0, 2], "memorised_acc": [1.0, 0.2, 1.0, 0.9],
                             "heldout_acc": [0.8, 0.7, 0.8, 0.8]})
    return tables({**P, "target": target}, scores, {n: 1.0 for n in scores}, deletion, planted,
                  {"plant_epochs": 3, "plant_loss": 0.01}, 10, 10)


def test_tables_are_long_and_compact():
    scores = {"a": np.arange(8, dtype=float).reshape(2, 4), "b": np.ones((2, 4))}
    out = _trial_tables("planted-2-0", scores, np.array([[1, 3], [1, 2]]))
    rows = out["neuron_scores"]
    assert rows.height == 16 and rows.schema["layer"] == pl.Int16 and rows.schema["unit"] == pl.Int16
    assert rows.schema["score"] == pl.Float32
    assert rows.filter((pl.col("technique") == "a") & (pl.col("layer") == 2) & (pl.col("unit") == 3))["score"][0] == 7
    summary = {r["technique"]: r for r in out["neuron_summary"].iter_rows(named=True)}
    assert summary["a"]["recall_at_k"] == 1.0  # units 6 and 7 of 8: the planted (layer 2, units 2 and 3)
    assert summary["b"]["recall_at_k"] == pytest.approx(2 / 8)  # all tied: chance
    assert summary["a"]["chance"] == pytest.approx(2 / 8)
    assert summary["a"]["mcog"] == pytest.approx((1 * 6 + 2 * 22) / 28)
    assert out["neuron_layers"].filter(pl.col("technique") == "a")["score"].to_list() == [6, 22]
    assert out["neuron_planted"]["layer"].to_list() == [2, 2]  # 1-based in tables
    assert set(out["neuron_scores"].columns) >= {"task", "model", "seed", "target"}
    noisy = _trial_tables("noisy", scores)
    assert "neuron_planted" not in noisy and np.isnan(noisy["neuron_summary"]["recall_at_k"][0])


def _db(path, frames):
    con = duckdb.connect(str(path))
    for name, frame in frames.items():
        con.register("df", frame.to_arrow())
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM df')
        con.unregister("df")
    con.close()
    return path


def test_recall_query_and_check(tmp_path):
    good = np.zeros((2, 4))
    good[1, 2:] = 1
    runs = [_trial_tables(f"planted-2-{s}", {"a": good + s * 0.01, "b": np.ones((2, 4))}, np.array([[1, 2], [1, 3]]))
            for s in range(3)]
    frames = {name: pl.concat([r[name] for r in runs]) for name in runs[0]}
    db = _db(tmp_path / "r.duckdb", frames)
    rows = {r["technique"]: r for r in query("neuron_recall", db).iter_rows(named=True)}
    assert rows["a"]["recall_at_k"] == 1.0 and rows["a"]["n_runs"] == 3 and rows["a"]["times_chance"] == 4.0
    assert rows["b"]["recall_at_k"] == 0.25
    checks = {r["check_name"]: r["status"] for r in neuron_recall(frames["neuron_summary"])}
    assert checks == {"neuron_recall:a": "pass", "neuron_recall:b": "warn"}
    deletion = query("neuron_deletion", db).filter(pl.col("percent") == 1.0)
    by = {r["technique"]: r for r in deletion.iter_rows(named=True)}
    assert by["a"]["forgotten"] == 0.8 and by["a"]["heldout_lost"] == 0.1 and by["random"]["forgotten"] == 0.1


def test_layer_agreement_query(tmp_path):
    neuron = _trial_tables("noisy", {"a": np.array([[1.0, 0], [2, 0], [3, 0]])})
    layer_scores = pl.DataFrame({"task": "t", "model": "m", "seed": 1, "pair": "", "technique": "swapping",
                                 "layer": [1, 2, 3], "score": [0.1, 0.2, 0.3]})
    db = _db(tmp_path / "a.duckdb", {**neuron, "layer_scores": layer_scores})
    (row,) = query("neuron_layer_agreement", db).iter_rows(named=True)
    assert row["spearman"] == 1.0 and row["neuron_mcog"] == pytest.approx(14 / 6, abs=0.01)
    assert row["layer_mcog"] == pytest.approx(1.4 / 0.6, abs=0.01)

    from raymem.charts import available_charts, build_chart

    assert "neuron_layer_agreement" in available_charts(db)
    (cells,) = build_chart("neuron_layer_agreement", db).to_dict()["datasets"].values()
    assert cells == [{"model": "m", "neuron_technique": "a", "layer_technique": "swapping", "spearman": 1.0,
                      "n_seeds": 1}]


def test_neuron_charts_build_from_the_queries(tmp_path):
    from raymem.charts import available_charts, build_chart

    good = np.zeros((2, 4))
    good[1, 2:] = 1
    runs = [_trial_tables(f"planted-2-{s}", {"a": good}, np.array([[1, 2], [1, 3]])) for s in range(2)]
    db = _db(tmp_path / "c.duckdb", {name: pl.concat([r[name] for r in runs]) for name in runs[0]})
    assert {"neuron_recall", "neuron_deletion"} <= set(available_charts(db))
    (recall,) = build_chart("neuron_recall", db).to_dict()["datasets"].values()
    assert recall[0]["recall_at_k"] == 1.0
    (deletion,) = build_chart("neuron_deletion", db).to_dict()["datasets"].values()
    assert {v["examples"] for v in deletion} == {"memorised_acc", "heldout_acc"}


def test_planted_layers_query(tmp_path):
    scores = np.array([[0.0, 1], [3, 3], [1, -5]])  # layer profile 1, 6, 1; b's 6, 1, 1
    hit = _trial_tables("planted-2-0", {"a": scores, "b": scores[[1, 0, 2]]}, np.array([[1, 0], [1, 1]]))
    db = _db(tmp_path / "p.duckdb", hit)
    rows = {r["technique"]: r for r in query("neuron_planted_layers", db).iter_rows(named=True)}
    assert rows["a"]["hit_at_1"] == 1.0 and rows["a"]["planted_mass"] == 0.75
    assert rows["b"]["hit_at_1"] == 0.0 and rows["b"]["planted_mass"] == 0.125
    assert rows["a"]["chance_mass"] == pytest.approx(1 / 3, abs=1e-3)
