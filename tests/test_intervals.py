"""Bootstrap intervals: the estimate is the headline number, the interval is around it,
and it narrows with more data and resamples the right unit."""

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats

from raymem.intervals import create_intervals_table, mcog_rows, spearman_rows


def precog_frame(n: int, seeds: int, strength: float, rng) -> pl.DataFrame:
    score = rng.uniform(size=n)
    return pl.concat([pl.DataFrame({"task": "t", "model": "m", "k": 1, "example_id": [f"e{i:04d}" for i in range(n)],
                                    "score": score, "seed": s,
                                    "correct": rng.uniform(size=n) < 0.5 + strength * (score - 0.5)})
                      for s in range(seeds)])


def test_precog_spearman_is_the_querys_and_its_interval_narrows_with_examples():
    rng = np.random.default_rng(0)
    small, large = precog_frame(100, 2, 0.8, rng), precog_frame(1600, 2, 0.8, rng)
    (row,) = spearman_rows(small)
    expected = stats.spearmanr(small["score"], small["correct"]).statistic
    assert row["estimate"] == pytest.approx(expected) and row["n_units"] == 100 and row["key"] == "k=1"
    assert row["low"] < row["estimate"] < row["high"]
    (narrow,) = spearman_rows(large)
    assert narrow["low"] > 0  # a real correlation: the interval excludes 0
    assert (narrow["high"] - narrow["low"]) < 0.4 * (row["high"] - row["low"])  # ~1/sqrt(16)


def test_resampling_examples_not_rows_keeps_seed_copies_together():
    """Four identical seeds carry one seed's information: the interval must not shrink 2x."""
    rng = np.random.default_rng(1)
    once = precog_frame(300, 1, 0.5, rng)
    four = pl.concat([once.with_columns(pl.lit(s).alias("seed")) for s in range(4)])
    (a,), (b,) = spearman_rows(once), spearman_rows(four)
    assert b["estimate"] == pytest.approx(a["estimate"])
    assert 0.8 < (b["high"] - b["low"]) / (a["high"] - a["low"]) < 1.25


def test_mcog_resamples_seeds_and_the_mean_is_over_the_papers_four():
    rows = [{"task": "t", "model": "m", "seed": seed, "technique": technique, "mcog": value}
            for seed, values in {1: (2.0, 3.0, 9.0), 2: (3.0, float("nan"), 9.0), 3: (4.0, 5.0, 9.0)}.items()
            for technique, value in zip(("swapping", "probing", "centroids"), values)]
    got = {r["key"]: r for r in mcog_rows(pl.DataFrame(rows))}
    assert got["swapping"]["estimate"] == 3.0 and got["swapping"]["n_units"] == 3
    # a t-interval, 3 +- t(2) * 1 / sqrt(3): a bootstrap could not leave the seeds' range 2-4
    half = stats.t.ppf(0.975, 2) / np.sqrt(3)
    assert (got["swapping"]["low"], got["swapping"]["high"]) == pytest.approx((3.0 - half, 3.0 + half))
    assert got["swapping"]["low"] < 2.0 and got["swapping"]["resampled"] == "seeds (t-interval)"
    assert got["probing"]["n_units"] == 2  # the NaN seed left out
    # per seed, the mean of swapping and probing (centroids not in it): 2.5, 3.0, 4.5
    assert got["mean"]["estimate"] == pytest.approx(np.mean([2.5, 3.0, 4.5]))
    one_seed = mcog_rows(pl.DataFrame([r for r in rows if r["seed"] == 1]))
    assert all(r["low"] is None and r["n_units"] == 1 for r in one_seed)


def test_the_table_is_built_from_the_study_tables_and_is_the_same_twice():
    rng = np.random.default_rng(2)
    n = 200
    noisy = rng.random(n) < 0.2
    mem = np.where(noisy, rng.normal(0.6, 0.2, n), rng.normal(0.2, 0.2, n))
    con = duckdb.connect()
    con.register("e", pl.DataFrame({"task": "t", "model": "m", "example_id": [f"e{i}" for i in range(n)],
                                    "split": "train", "noisy": noisy}).to_arrow())
    con.register("c", pl.DataFrame({"task": "t", "model": "m", "example_id": [f"e{i}" for i in range(n)],
                                    "mem": mem}).to_arrow())
    con.execute("CREATE TABLE examples AS SELECT * FROM e")
    con.execute("CREATE TABLE counterfactual AS SELECT * FROM c")
    assert create_intervals_table(con) == 1
    first = con.execute("SELECT * FROM intervals").fetchall()
    create_intervals_table(con)
    assert con.execute("SELECT * FROM intervals").fetchall() == first
    (analysis, _, _, _, estimate, low, high, resampled, units), = first
    assert analysis == "counterfactual_auroc" and resampled == "examples" and units == n
    assert 0.5 < low < estimate < high <= 1.0


def test_correlations_across_tasks_resample_tasks_and_match_their_queries(tmp_path):
    from raymem.queries import query

    rng = np.random.default_rng(4)
    tasks = [f"T{i}" for i in range(6)]
    depth = dict(zip(tasks, rng.uniform(1, 4, len(tasks))))
    rows = [{"task": t, "model": m, "seed": seed, "pair": "", "technique": tech,
             "mcog": depth[t] + rng.normal(0, 0.3)}
            for t in tasks for m in ("m1", "m2") for seed in (1, 2) for tech in ("swapping", "probing")]
    db = tmp_path / "r.duckdb"
    con = duckdb.connect(str(db))
    con.register("m", pl.DataFrame(rows).to_arrow())
    con.execute("CREATE TABLE mcog AS SELECT * FROM m")
    create_intervals_table(con)
    got = {(a, model, key): (estimate, low, high, n) for a, model, key, estimate, low, high, n in con.execute(
        "SELECT analysis, model, key, estimate, low, high, n_units FROM intervals").fetchall()}
    (n_rows,), = con.execute("SELECT COUNT(*) FROM intervals").fetchall()
    con.close()
    (agreement,) = query("model_agreement", db).iter_rows(named=True)
    estimate, low, high, n = got["model_agreement", "m1 vs m2", ""]
    assert round(estimate, 3) == agreement["spearman_mean_mcog"] and n == 6 and low <= estimate <= high
    # the query lists them all, or one analysis
    assert query("intervals", db).height == n_rows
    assert set(query("intervals", db, analysis="model_agreement")["analysis"]) == {"model_agreement"}
    for row in query("technique_agreement", db).iter_rows(named=True):
        estimate, low, high, n = got["technique_agreement", row["model"], f"{row['technique_a']} / {row['technique_b']}"]
        # 'ALL' pools both models' 6 tasks
        assert round(estimate, 3) == row["spearman"] and n == (12 if row["model"] == "ALL" else 6)
        assert low <= estimate <= high
