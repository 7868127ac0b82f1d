"""Bootstrap confidence intervals for the study's headline numbers.

Built with the database as the `intervals` table: one row per (analysis, task, model, key)
with the estimate, its 95% interval (percentile bootstrap; M-CoG: t), what was resampled and how many
units there were. Each resamples the unit its number is an average over:

    counterfactual_auroc  per (task, model): AUROC of mem, noisy vs clean training examples;
                          examples resampled within each group
    precog_spearman       per (task, model, k): Spearman of PreCog with the clean model's
                          correctness; examples resampled, each with all its seeds
    mcog                  per (task, model, technique, and 'mean' over the paper's four):
                          mean M-CoG over seeds; a 95% t-interval over seeds, not a
                          bootstrap, which under-covers with 3 or 4 seeds (one seed: none)
    model_agreement,      the Spearman correlations across tasks of those queries, per row
    technique_agreement,  of the query (model_agreement: its spearman_mean_mcog; technique_agreement's
                          'ALL' rows: one point per (model, task)); tasks resampled (fewer than 3
                          tasks: no interval).
    generalisation_correlation  Each reads its query's own `paired` step, so the definitions
                          cannot drift apart.

1,000 resamples from a fixed seed, so a rebuilt database has the same intervals.
Accuracies get Wilson intervals where they are reported (control_accuracy, the charts).
"""

from __future__ import annotations

import functools

import duckdb
import numpy as np
import polars as pl
from scipy.stats import rankdata
from scipy.stats import t as t_dist

from raymem.checks import auroc, auroc_interval
from raymem.queries import load_query
from raymem.store import table_names, write_derived

DRAWS = 1000
MCOG_TECHNIQUES = ("swapping", "retraining", "gradients", "probing")  # the paper's M-CoG mean
SCHEMA = {"analysis": pl.Utf8, "task": pl.Utf8, "model": pl.Utf8, "key": pl.Utf8, "estimate": pl.Float64,
          "low": pl.Float64, "high": pl.Float64, "resampled": pl.Utf8, "n_units": pl.Int64}


def percentile_interval(values) -> tuple[float | None, float | None]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def t_interval(values) -> tuple[float, float]:
    """95% Student-t interval of the mean of `values` (at least two)."""
    values = np.asarray(values, float)
    half = t_dist.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def _row(analysis, task, model, key, estimate, interval, resampled, n) -> dict:
    return {"analysis": analysis, "task": task, "model": model, "key": key, "estimate": estimate,
            "low": interval[0], "high": interval[1], "resampled": resampled, "n_units": n}


def auroc_rows(scored: pl.DataFrame) -> list[dict]:
    """`scored`: task, model, mem, noisy of the training examples with a mem."""
    rows = []
    for (task, model), group in scored.group_by("task", "model", maintain_order=True):
        positive = group.filter(pl.col("noisy"))["mem"].to_numpy()
        negative = group.filter(~pl.col("noisy"))["mem"].to_numpy()
        if not len(positive) or not len(negative):
            continue
        rows.append(_row("counterfactual_auroc", task, model, "", auroc(positive, negative),
                         auroc_interval(positive, negative, DRAWS), "examples", len(positive) + len(negative)))
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def spearman_rows(scored: pl.DataFrame) -> list[dict]:
    """`scored`: task, model, k, example_id, score, correct (one row per example and seed)."""
    rows = []
    for (task, model, k), group in scored.group_by("task", "model", "k", maintain_order=True):
        group = group.sort("example_id", "seed")
        ids, index = np.unique(group["example_id"].to_numpy(), return_inverse=True)
        members = [np.flatnonzero(index == i) for i in range(len(ids))]
        x, y = group["score"].to_numpy(), group["correct"].to_numpy().astype(float)
        rng = np.random.default_rng(0)
        draws = []
        for _ in range(DRAWS):
            rows_drawn = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
            draws.append(spearman(x[rows_drawn], y[rows_drawn]))
        rows.append(_row("precog_spearman", task, model, f"k={k}", spearman(x, y), percentile_interval(draws),
                         "examples", len(ids)))
    return rows


def mcog_rows(mcog: pl.DataFrame) -> list[dict]:
    """`mcog`: task, model, seed, technique, mcog of the studied pairs (NaN: nothing placed)."""
    per_seed = mcog.with_columns(pl.col("mcog").fill_nan(None))
    mean = (per_seed.filter(pl.col("technique").is_in(MCOG_TECHNIQUES))
            .group_by("task", "model", "seed").agg(pl.col("mcog").mean()).with_columns(pl.lit("mean").alias("technique")))
    rows = []
    for (task, model, technique), group in (pl.concat([per_seed.select(mean.columns), mean.select(mean.columns)])
                                            .drop_nulls("mcog").sort("task", "model", "technique", "seed")
                                            .group_by("task", "model", "technique", maintain_order=True)):
        values = group["mcog"].to_numpy()
        # a t-interval: a bootstrap over a handful of seeds (3 as published) can never reach past
        # the seeds' own range and under-covers badly
        interval = (None, None) if len(values) < 2 else t_interval(values)
        rows.append(_row("mcog", task, model, technique, float(values.mean()), interval, "seeds (t-interval)",
                         len(values)))
    return rows


# query -> the columns that name one correlation (its row in the query's result)
TASK_CORRELATIONS = {"model_agreement": ("model_a", "model_b"),
                     "technique_agreement": ("model", "technique_a", "technique_b"),
                     "generalisation_correlation": ("model", "measure", "against")}


def paired_sql(name: str) -> str:
    """The query's steps up to its `paired` one (task, x, y per correlation), selected."""
    sql, _ = load_query(name)
    return sql[:sql.index("ranked AS (")].rstrip().rstrip(",") + "\nSELECT * FROM paired"


def task_correlation_rows(name: str, paired: pl.DataFrame) -> list[dict]:
    keys = TASK_CORRELATIONS[name]
    rows = []
    for values, group in paired.sort(*keys, "task").group_by(*keys, maintain_order=True):
        x, y = group["x"].to_numpy().astype(float), group["y"].to_numpy().astype(float)
        rng = np.random.default_rng(0)
        interval = (None, None) if len(x) < 3 else percentile_interval(
            [spearman(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(DRAWS))])
        named = dict(zip(keys, values))
        model = named.pop("model", None) or f"{named.pop('model_a')} vs {named.pop('model_b')}"
        rows.append(_row(name, "", model, " / ".join(str(v) for v in named.values()), spearman(x, y), interval,
                         "tasks", len(x)))
    return rows


INPUTS = {  # analysis -> (the tables it needs, the SQL of its input, its rows)
    "counterfactual_auroc": ({"counterfactual", "examples"}, """
        SELECT c.task, c.model, c.mem, e.noisy FROM counterfactual c JOIN examples e USING (task, model, example_id)
        WHERE e.split = 'train' AND c.mem IS NOT NULL ORDER BY c.task, c.model, c.example_id""", auroc_rows),
    "precog_spearman": ({"precog", "predictions"}, """
        SELECT p.task, p.model, p.k, p.example_id, p.score, pr.seed, pr.correct
        FROM precog p JOIN predictions pr USING (task, model, example_id)
        WHERE pr.variant = 'clean' AND pr.checkpoint = 'final' AND pr.split <> 'train'
        ORDER BY p.task, p.model, p.k, p.example_id, pr.seed""", spearman_rows),
    "mcog": ({"mcog"}, """
        SELECT task, model, seed, technique, mcog FROM mcog WHERE pair = ''
        ORDER BY task, model, technique, seed""", mcog_rows),
    **{name: (tables, functools.partial(paired_sql, name), functools.partial(task_correlation_rows, name))
       for name, tables in (("model_agreement", {"mcog"}), ("technique_agreement", {"mcog"}),
                            ("generalisation_correlation", {"mcog", "events", "counterfactual", "examples",
                                                            "predictions"}))},
}


def create_intervals_table(con) -> int:
    """Build `intervals` in an open DuckDB database from the tables it has; return its rows."""
    present = table_names(con)
    rows = []
    for needs, sql, make_rows in INPUTS.values():
        if not needs <= present:
            continue
        try:
            frame = con.sql(sql if isinstance(sql, str) else sql()).pl()
        except duckdb.BinderException:  # a table without the columns a study writes: no interval
            continue
        rows += make_rows(frame)
    return write_derived(con, "intervals", pl.DataFrame(rows, schema=SCHEMA))
