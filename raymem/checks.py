"""Checks of a study's own results: can its numbers be believed?

Built with the database, from its tables, as the `checks` table: one row per (task, model,
seed, check_name) with the measured value, the threshold, pass or warn, and for a warning what
to change. A check whose inputs the study did not produce is left out. The checks:

    above_majority       clean accuracy on the evaluation split beats the majority class: the
                         lower end of its 95% Wilson interval lies above the majority share
    memorised_checkpoint the noisy model reached the memorised checkpoint (else forgetting
                         gradients, which reads it, used the final one)
    fits_noisy_labels    the noisy model fits its relabelled training examples
    counterfactual_auroc mem separates relabelled from clean examples better than chance; a
                         wide confidence interval asks for more subset models
    control_moves        a technique's top layers move with the planted pair
    class_size           every class keeps enough training examples after subsampling
    neuron_recall        a neuron technique finds the planted units well above chance
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
from scipy.stats import rankdata

from raymem.store import table_names, write_derived

FITS_NOISY = 0.9
AUROC_CHANCE, AUROC_CI_WIDTH = 0.5, 0.2
MIN_CLASS_EXAMPLES = 20
NEURON_TIMES_CHANCE = 2.0
SCHEMA = {"task": pl.Utf8, "model": pl.Utf8, "seed": pl.Int64, "check_name": pl.Utf8, "value": pl.Float64,
          "threshold": pl.Float64, "status": pl.Utf8, "message": pl.Utf8}


def wilson_interval(successes: pl.Expr, n: pl.Expr, z: float = 1.959964) -> tuple[pl.Expr, pl.Expr]:
    """95% Wilson interval of a proportion, as polars expressions (low, high)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)).sqrt()
    return centre - half, centre + half


def _row(task, model, seed, check, value, threshold, ok, warning) -> dict:
    return {"task": task, "model": model, "seed": seed, "check_name": check, "value": float(value),
            "threshold": float(threshold), "status": "pass" if ok else "warn",
            "message": "" if ok else warning}


def above_majority(fit: pl.DataFrame, majority: pl.DataFrame) -> list[dict]:
    """`fit`: accuracy per (task, model, seed, variant, split, noisy) at the final checkpoint;
    `majority`: the majority class's share per (task, model, split). Passes only when the
    lower end of the accuracy's 95% Wilson interval (over the split's n examples) clears the
    majority share: an accuracy a little above it on a few hundred examples is no evidence
    the model learnt the task (0.375 on 400 examples: interval 0.33-0.42, majority 0.3625)."""

    accuracy = ((pl.col("accuracy") * pl.col("n")).sum() / pl.col("n").sum()).alias("accuracy")
    clean = (fit.filter((pl.col("variant") == "clean") & (pl.col("split") != "train"))
             .group_by("task", "model", "seed", "split", maintain_order=True)
             .agg(accuracy, pl.col("n").sum().alias("n"))
             .join(majority, on=["task", "model", "split"]))
    low, high = wilson_interval(pl.col("accuracy") * pl.col("n"), pl.col("n"))
    clean = clean.with_columns(low.alias("low"), high.alias("high"))
    return [_row(r["task"], r["model"], r["seed"], "above_majority", r["accuracy"], r["majority"],
                 r["low"] > r["majority"],
                 f"clean {r['split']} accuracy {r['accuracy']:.3f} (95% Wilson interval {r['low']:.3f}-"
                 f"{r['high']:.3f}, {r['n']} examples) does not clear the majority class's share "
                 f"{r['majority']:.3f}: the model learnt little or the split is too small to tell; raise "
                 f"finetune.epochs or lr, or check the labels")
            for r in clean.iter_rows(named=True)]


def memorised_checkpoint(runs: pl.DataFrame) -> list[dict]:
    noisy = runs.filter((pl.col("stage") == "finetune") & (pl.col("variant") == "noisy")
                        & (pl.col("status") == "ok"))
    return [_row(r["task"], r["model"], r["seed"], "memorised_checkpoint",
                 r["memorised_epoch"] is not None, 1, r["memorised_epoch"] is not None,
                 "the noisy model never reached training macro-F1 >= finetune.memorised_f1, so "
                 "forgetting gradients read its final checkpoint instead; raise finetune.epochs or lr")
            for r in noisy.iter_rows(named=True)]


def fits_noisy_labels(fit: pl.DataFrame) -> list[dict]:
    noisy = fit.filter((pl.col("variant") == "noisy") & (pl.col("split") == "train") & pl.col("noisy"))
    return [_row(r["task"], r["model"], r["seed"], "fits_noisy_labels", r["accuracy"], FITS_NOISY,
                 r["accuracy"] >= FITS_NOISY,
                 f"the noisy model fits only {r['accuracy']:.3f} of its relabelled training examples at its "
                 f"final checkpoint: it has not memorised them; raise finetune.epochs or lr")
            for r in noisy.iter_rows(named=True)]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    # ties share their average rank; one sort (a loop over tied values was quadratic)
    ranks = rankdata(np.concatenate([positive, negative]), method="average")
    return float((ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2)
                 / (len(positive) * len(negative)))


def auroc_interval(positive: np.ndarray, negative: np.ndarray, draws: int = 1000, seed: int = 0):
    """95% bootstrap interval of the AUROC, resampling each group."""
    rng = np.random.default_rng(seed)
    values = [auroc(rng.choice(positive, len(positive)), rng.choice(negative, len(negative)))
              for _ in range(draws)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def counterfactual_auroc(counterfactual: pl.DataFrame, examples: pl.DataFrame) -> list[dict]:
    scored = counterfactual.drop_nulls("mem").join(
        examples.filter(pl.col("split") == "train").select("task", "model", "example_id", "noisy"),
        on=["task", "model", "example_id"])
    rows = []
    for (task, model), group in scored.group_by("task", "model", maintain_order=True):
        positive = group.filter(pl.col("noisy"))["mem"].to_numpy()
        negative = group.filter(~pl.col("noisy"))["mem"].to_numpy()
        if len(positive) == 0 or len(negative) == 0:
            continue
        value = auroc(positive, negative)
        low, high = auroc_interval(positive, negative)
        if value <= AUROC_CHANCE:
            rows.append(_row(task, model, None, "counterfactual_auroc", value, AUROC_CHANCE, False,
                             f"AUROC {value:.2f} (95% CI {low:.2f}-{high:.2f}): relabelled examples look no more "
                             f"memorised than clean ones; check that the noisy labels were learnt "
                             f"(fits_noisy_labels) and raise counterfactual.n_models"))
        else:
            rows.append(_row(task, model, None, "counterfactual_auroc", value, AUROC_CHANCE,
                             high - low <= AUROC_CI_WIDTH,
                             f"AUROC {value:.2f} but its 95% CI {low:.2f}-{high:.2f} is wider than "
                             f"{AUROC_CI_WIDTH}: raise counterfactual.n_models"))
    return rows


def control_moves(control_accuracy: pl.DataFrame) -> list[dict]:
    rows = []
    for (task, model, seed, technique), group in control_accuracy.group_by(
            "task", "model", "seed", "technique", maintain_order=True):
        if group.height < 2:
            continue
        distinct = group["top_layers"].n_unique()
        rows.append(_row(task, model, seed, f"control_moves:{technique}", distinct, 2, distinct >= 2,
                         f"{technique} puts layers {group['top_layers'][0]} on top wherever the pair was "
                         f"planted ({group.height} pairs): it is blind to where memorisation is"))
    return rows


def class_size(examples: pl.DataFrame) -> list[dict]:
    train = examples.filter(pl.col("split") == "train")
    counts = train.group_by("task", "model", "original_label").len().sort("task", "model", "original_label")
    rows = []
    for (task, model), group in counts.group_by("task", "model", maintain_order=True):
        smallest = group.sort("len").row(0, named=True)
        rows.append(_row(task, model, None, "class_size", smallest["len"], MIN_CLASS_EXAMPLES,
                         smallest["len"] >= MIN_CLASS_EXAMPLES,
                         f"class {smallest['original_label']} has {smallest['len']} training examples: too few "
                         f"to learn or to relabel; raise subsample.train or use subsample_strategy: stratified"))
    return rows


def neuron_recall(neuron_summary: pl.DataFrame) -> list[dict]:
    planted = neuron_summary.filter(pl.col("target").str.starts_with("planted-"))
    rows = []
    for (task, model, seed, technique), group in planted.group_by(
            "task", "model", "seed", "technique", maintain_order=True):
        recall, chance = group["recall_at_k"].mean(), group["chance"].mean()
        times = recall / chance
        rows.append(_row(task, model, seed, f"neuron_recall:{technique}", times, NEURON_TIMES_CHANCE,
                         times >= NEURON_TIMES_CHANCE,
                         f"{technique} finds {recall:.3f} of the planted units, {times:.1f}x a random "
                         f"ranking's {chance:.4f}: at random's level on the planted set"))
    return rows


# Aggregates computed inside DuckDB, so that no check holds the predictions in memory.
DERIVED = {
    "fit": """SELECT p.task, p.model, p.seed, p.variant, p.split, e.noisy, COUNT(*) AS n,
                     AVG(p.correct::DOUBLE) AS accuracy
              FROM predictions p JOIN examples e USING (task, model, example_id)
              WHERE p.checkpoint = 'final' GROUP BY ALL ORDER BY ALL""",
    "majority": """SELECT task, model, split, MAX(n) / SUM(n) AS majority
                   FROM (SELECT task, model, split, original_label, COUNT(*) AS n FROM examples GROUP BY ALL)
                   GROUP BY ALL ORDER BY ALL""",
}
# check -> the frames it reads (tables, or DERIVED from them) and the tables those need
INPUTS = {
    class_size: (("examples",), {"examples"}),
    above_majority: (("fit", "majority"), {"predictions", "examples"}),
    fits_noisy_labels: (("fit",), {"predictions", "examples"}),
    memorised_checkpoint: (("runs",), {"runs"}),
    counterfactual_auroc: (("counterfactual", "examples"), {"counterfactual", "examples"}),
    control_moves: (("control_accuracy",), {"control_accuracy"}),
    neuron_recall: (("neuron_summary",), {"neuron_summary"}),
}


def checks(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Every check whose input frames are present."""
    rows = []
    for check, (reads, _) in INPUTS.items():
        if all(name in frames for name in reads):
            try:
                rows += check(*(frames[name] for name in reads))
            except pl.exceptions.ColumnNotFoundError:  # as above: not a study's table
                continue
    return pl.DataFrame(rows, schema=SCHEMA)


def create_checks_table(con) -> int:
    """Build `checks` in an open DuckDB database from its tables; return its row count."""
    present = table_names(con)
    frames = {}
    for reads, needs in INPUTS.values():
        if not needs <= present:
            continue
        try:
            for name in reads:
                if name not in frames:
                    frames[name] = con.sql(DERIVED.get(name, f'SELECT * FROM "{name}"')).pl()
        except duckdb.BinderException:  # a table without the columns a study writes: no check
            continue
    return write_derived(con, "checks", checks(frames))
