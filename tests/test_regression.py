"""PreCog's logistic regression: the effect it reports is the one planted in the data."""

import duckdb
import numpy as np
import polars as pl

from raymem.regression import create_precog_regression_table, regression_rows


def synthetic(task: str, n: int, base: float, effect: float, seeds: int, rng) -> pl.DataFrame:
    """Correctness driven by PreCog alone (per SD: `effect` log-odds); length and rarity noise."""
    precog = rng.uniform(0, 1, n)
    z = (precog - precog.mean()) / precog.std()
    log_tokens, rarity = np.log(rng.integers(3, 40, n)), rng.normal(5, 1, n)
    rows = []
    for seed in range(seeds):
        correct = rng.uniform(size=n) < 1 / (1 + np.exp(-(base + effect * z)))
        rows.append(pl.DataFrame({"task": task, "model": "m", "k": 1, "example_id": [f"{task}{i}" for i in range(n)],
                                  "precog": precog, "log_tokens": log_tokens, "rarity": rarity,
                                  "correct": correct.astype(int), "seed": seed}))
    return pl.concat(rows)


def by_term(frame: pl.DataFrame, task: str) -> dict[str, dict]:
    return {r["term"]: r for r in frame.filter(pl.col("task") == task).to_dicts()}


def test_the_planted_effect_is_recovered_and_the_controls_are_not_credited():
    rng = np.random.default_rng(0)
    data = pl.concat([synthetic("a", 1500, 0.5, 1.2, 2, rng), synthetic("b", 1500, -0.5, 1.2, 2, rng)])
    result = regression_rows(data)
    for task in ("a", "b", "ALL"):
        terms = by_term(result, task)
        precog = terms["precog"]
        assert precog["ci_low"] < 1.2 < precog["ci_high"], precog
        assert precog["p"] < 1e-6 and abs(precog["odds_ratio"] - np.exp(precog["coef"])) < 1e-9
        for control in ("log_tokens", "rarity"):  # no effect planted: none found
            assert abs(terms[control]["z"]) < 3 and abs(terms[control]["coef"]) < 0.15, terms[control]
    # pooled, with one intercept per task: the tasks' different base rates are not PreCog's
    assert by_term(result, "ALL")["precog"]["n"] == 6000


def test_clustered_errors_count_an_example_once_not_once_per_seed():
    """The same examples repeated over 4 seeds with identical outcomes carry no more
    information than one seed: clustered standard errors must not shrink by 2x."""
    rng = np.random.default_rng(1)
    once = synthetic("a", 800, 0.0, 0.8, 1, rng)
    repeated = pl.concat([once.with_columns(pl.lit(s).alias("seed")) for s in range(4)])
    se_once = by_term(regression_rows(once), "a")["precog"]["se"]
    se_repeated = by_term(regression_rows(repeated), "a")["precog"]["se"]
    assert 0.8 < se_repeated / se_once < 1.25


def test_a_fit_that_cannot_be_made_says_why():
    rng = np.random.default_rng(2)
    data = synthetic("a", 200, 0.0, 1.0, 1, rng)
    all_correct = regression_rows(data.with_columns(pl.lit(1).alias("correct")))
    assert all_correct["coef"].is_null().all() and "every prediction is correct" in all_correct["note"][0]
    separated = regression_rows(data.with_columns((pl.col("precog") > 0.5).cast(int).alias("correct")))
    assert separated["coef"].is_null().all() and "the fit failed" in separated["note"][0]
    tiny = regression_rows(data.head(5))
    assert "only 5 examples" in tiny["note"][0]


def test_the_table_is_built_from_the_study_tables():
    rng = np.random.default_rng(3)
    data = synthetic("a", 300, 0.0, 1.0, 2, rng)
    con = duckdb.connect()
    con.register("d", data.to_arrow())
    con.execute("CREATE TABLE precog AS SELECT DISTINCT task, model, k, example_id, precog AS score FROM d")
    con.execute("CREATE TABLE examples AS SELECT DISTINCT task, model, example_id, 'test' AS split, "
                "round(exp(log_tokens))::INTEGER AS n_tokens, rarity FROM d WHERE seed = 0")
    con.execute("CREATE TABLE predictions AS SELECT task, model, example_id, seed, 'clean' AS variant, "
                "'final' AS checkpoint, 'test' AS split, correct::BOOLEAN AS correct FROM d")
    assert create_precog_regression_table(con) == 3
    coef, n = con.execute("SELECT coef, n FROM precog_regression WHERE term = 'precog'").fetchone()
    assert n == 600 and coef > 0.6
    con.execute("DROP TABLE precog")
    assert create_precog_regression_table(con) is None
