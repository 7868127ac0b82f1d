"""The headline tables a study ends with: which queries, filtered how, under what title,
and how they read in an 80-column terminal. The end of a study, `raymem report` and the
Python API show the same ones.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import polars as pl

from raymem.errors import ConfigError

HEADLINES = [  # (query, filter, title) printed at the end of a study, where the study has the tables
    ("precog_accuracy_by_bin", pl.col("task") == "ALL", "Accuracy by PreCog bin (all tasks pooled)"),
    ("precog_correlation", None, "PreCog vs correctness"),
    ("precog_regression", pl.col("term") == "precog",
     "PreCog's effect on correctness beyond length and rarity (logistic, per SD)"),
    # only where the model had examples planted in its pre-training corpus
    ("precog_planted", (pl.col("k") == pl.col("k").min()) & (pl.col("planted_count").max() > 0),
     "PreCog by times planted in pre-training"),
    ("memorisation_fit", pl.col("variant") == "noisy", "Fit of the noisy-label models (train split)"),
    ("counterfactual_auroc", pl.col("annotators") == "all", "Counterfactual memorisation: noisy vs clean"),
    ("mcog_by_task", None, "Memorisation centre of gravity (M-CoG) per task and technique"),
    ("control_accuracy", None, "Control setup: does each technique find the planted layers?"),
    ("neuron_recall", None, "Neurons: recall@k of the planted units per technique"),
    ("intervals", pl.col("low").is_not_null(), "95% bootstrap intervals"),
]


def headline_table(title: str, df: pl.DataFrame, fold: bool = True) -> str:
    """A table that reads in an 80-column terminal: a column with one value in every row
    goes into the title (`fold`), floats get 3 decimals, and nothing wraps mid-word."""
    fixed = [c for c in df.columns if fold and df.height > 1 and df[c].n_unique() == 1]
    if fixed:
        title += " [" + ", ".join(f"{c} {df[c][0]}" for c in fixed) + "]"
        df = df.drop(fixed)
    with pl.Config(tbl_rows=40, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   tbl_formatting="ASCII_MARKDOWN", fmt_str_lengths=40, float_precision=3,
                   tbl_width_chars=1000):
        return f"{textwrap.fill(title, 80)}\n{df}"


def headline_frames(db_path: Path, bin_width: float):
    """Yield (query name, title, rows) of each headline the database has the tables for
    (the end of a study and `raymem report` show the same)."""
    from raymem.queries import load_query, query  # duckdb: not at every command's start

    for name, keep, title in HEADLINES:
        params = {"bin_width": bin_width} if "bin_width" in load_query(name)[1] else {}
        try:
            df = query(name, db_path, **params)
        except ConfigError:  # the study did not run the stage this query reads
            continue
        df = df.filter(keep) if keep is not None else df
        if df.height:
            yield name, title, df


def check_location(row: dict) -> str:
    """Where a check's row applies: task, model and seed, as far as it names them."""
    return " ".join(str(row[k]) for k in ("task", "model") if row[k]) + (
        f" seed {row['seed']}" if row["seed"] is not None else "")
