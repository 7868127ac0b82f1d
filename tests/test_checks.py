"""Each check of raymem/checks.py passes and warns on constructed results."""

import duckdb
import numpy as np
import polars as pl
import pytest

from raymem import checks


def _examples(labels, split="train", noisy=None, task="t"):
    n = len(labels)
    return pl.DataFrame({"task": task, "model": "m", "split": split, "example_id": [f"{split}{i}" for i in range(n)],
                         "original_label": labels, "noisy": noisy if noisy is not None else [False] * n})


def _predictions(correct, variant="clean", split="test", checkpoint="final", seed=1):
    return pl.DataFrame({"task": "t", "model": "m", "seed": seed, "variant": variant, "checkpoint": checkpoint,
                         "split": split, "example_id": [f"{split}{i}" for i in range(len(correct))],
                         "correct": correct})


def _one(rows):
    (row,) = rows
    return row


def _checks_of(tmp_path, **tables) -> dict[str, dict]:
    """Build the checks of a database holding `tables`; check name -> its row."""
    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    for name, frame in tables.items():
        con.register("frame", frame.to_arrow())
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
        con.unregister("frame")
    checks.create_checks_table(con)
    rows = con.sql("SELECT * FROM checks").pl().to_dicts()
    con.close()
    return {r["check_name"]: r for r in rows}


@pytest.mark.parametrize("accuracy, status", [(0.70, "warn"), (0.76, "warn"), (0.86, "pass")])
def test_above_majority(tmp_path, accuracy, status):
    # majority share 0.7 on 100 examples: 0.76 is above it, but its Wilson interval (0.67-0.84) is not
    examples = _examples([0] * 70 + [1] * 30, split="test")
    correct = [True] * round(accuracy * 100) + [False] * (100 - round(accuracy * 100))
    row = _checks_of(tmp_path, examples=examples, predictions=_predictions(correct))["above_majority"]
    assert row["status"] == status and row["threshold"] == pytest.approx(0.7)
    assert row["value"] == pytest.approx(accuracy)
    assert (status == "warn") == ("raise finetune.epochs or lr" in row["message"])


def test_above_majority_warns_on_a_held_out_eight_topic_task_barely_above_its_majority(tmp_path):
    # 400 test examples over 8 topics, the largest 145 (0.3625); the model gets 150 right (0.375)
    labels = [0] * 145 + [1 + i % 7 for i in range(255)]
    examples = _examples(labels, split="test")
    row = _checks_of(tmp_path, examples=examples,
                     predictions=_predictions([True] * 150 + [False] * 250))["above_majority"]
    assert row["value"] == pytest.approx(0.375) and row["threshold"] == pytest.approx(0.3625)
    assert row["status"] == "warn" and "0.329-0.423" in row["message"] and "400 examples" in row["message"]


def test_memorised_checkpoint():
    runs = pl.DataFrame({"stage": ["finetune"] * 3, "task": "t", "model": "m", "seed": [1, 2, 1],
                         "variant": ["noisy", "noisy", "clean"], "status": "ok", "memorised_epoch": [12, None, None]})
    rows = checks.memorised_checkpoint(runs)
    assert [(r["seed"], r["status"]) for r in rows] == [(1, "pass"), (2, "warn")]
    assert "forgetting gradients read its final checkpoint instead" in rows[1]["message"]


@pytest.mark.parametrize("fitted, status", [(9, "pass"), (5, "warn")])
def test_fits_noisy_labels(tmp_path, fitted, status):
    examples = _examples([0] * 20, noisy=[True] * 10 + [False] * 10)
    predictions = _predictions([True] * fitted + [False] * (10 - fitted) + [True] * 10, variant="noisy", split="train")
    row = _checks_of(tmp_path, examples=examples, predictions=predictions)["fits_noisy_labels"]
    assert row["status"] == status and row["value"] == pytest.approx(fitted / 10)


def test_auroc_matches_the_mann_whitney_definition():
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(1, 1, 40), rng.normal(0, 1, 60)
    pairs = (positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean()
    assert checks.auroc(positive, negative) == pytest.approx(pairs)
    assert checks.auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    # many ties (scores rounded to a tenth, as mem of few subset models is)
    positive, negative = positive.round(1), negative.round(1)
    pairs = (positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean()
    assert checks.auroc(positive, negative) == pytest.approx(pairs)


@pytest.mark.parametrize("shift, n, status, words", [
    (2.0, 300, "pass", ""),
    (-1.0, 300, "warn", "no more memorised than clean"),
    (1.0, 12, "warn", "raise counterfactual.n_models"),  # above chance, but the interval is wide
])
def test_counterfactual_auroc(shift, n, status, words):
    rng = np.random.default_rng(1)
    noisy = np.arange(n) < n // 3
    mem = rng.normal(0, 1, n) + shift * noisy
    examples = _examples([0] * n, noisy=noisy.tolist())
    counterfactual = pl.DataFrame({"task": "t", "model": "m", "example_id": examples["example_id"], "mem": mem})
    row = _one(checks.counterfactual_auroc(counterfactual, examples))
    assert row["status"] == status and words in row["message"]


def test_control_moves():
    rows = pl.DataFrame({"task": "t", "model": "m", "seed": 1,
                         "technique": ["swapping"] * 3 + ["probing"] * 3,
                         "top_layers": ["1,2", "2,3", "3,4", "1,4", "1,4", "1,4"]})
    found = {r["check_name"]: r for r in checks.control_moves(rows)}
    assert found["control_moves:swapping"]["status"] == "pass"
    assert found["control_moves:probing"]["status"] == "warn"
    assert "puts layers 1,4 on top wherever the pair was planted" in found["control_moves:probing"]["message"]


def test_class_size():
    row = _one(checks.class_size(_examples([0] * 50 + [1] * 4)))
    assert row["status"] == "warn" and row["value"] == 4 and "class 1 has 4 training examples" in row["message"]
    assert _one(checks.class_size(_examples([0] * 50 + [1] * 30)))["status"] == "pass"


def test_checks_table_is_built_from_what_the_database_has(tmp_path):
    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    con.register("e", _examples([0] * 50 + [1] * 4).to_arrow())
    con.execute("CREATE TABLE examples AS SELECT * FROM e")
    assert checks.create_checks_table(con) == 1  # class_size only: no predictions, runs, ...
    assert con.execute("SELECT check_name, status FROM checks").fetchall() == [("class_size", "warn")]
    con.close()
