"""Altair charts built from named query results; saved as PNG and self-contained HTML."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from raymem.errors import ConfigError
from raymem.queries import query


def precog_accuracy_by_bin(db) -> alt.Chart:
    data = query("precog_accuracy_by_bin", db).with_columns(
        (pl.col("bin_start") + (pl.col("bin_end") - pl.col("bin_start")) / 2).alias("bin_mid"),
        ("k=" + pl.col("k").cast(pl.Utf8)).alias("k"))
    base = alt.Chart(data).encode(
        x=alt.X("bin_mid:Q", title="PreCog (bin centre)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("task:N"))
    lines = base.mark_line(point=True).encode(
        y=alt.Y("accuracy:Q", title="accuracy after fine-tuning", scale=alt.Scale(zero=False)),
        tooltip=["task", "k", "bin_start", "bin_end", "accuracy", "n_examples"])
    counts = base.mark_text(dy=-10, fontSize=9).encode(y="accuracy:Q", text="n_examples:Q")
    return (lines + counts).properties(width=260, height=200).facet(
        column=alt.Column("k:N", title=None), row=alt.Row("model:N", title=None)).properties(
        title="Accuracy by PreCog bin (labels: examples per bin)")


def precog_planted(db) -> alt.Chart:
    data = query("precog_distribution", db).with_columns(
        ("k=" + pl.col("k").cast(pl.Utf8)).alias("k"),
        pl.col("planted_count").cast(pl.Utf8).alias("planted"))
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("bin_start:O", title="PreCog bin (start)"),
        y=alt.Y("share:Q", title="share of examples"),
        color=alt.Color("planted:N", title="times planted"),
        tooltip=["planted", "bin_start", "share", "n_examples"],
    ).properties(width=220, height=160).facet(
        column=alt.Column("planted:N", title="times planted in pre-training"),
        row=alt.Row("k:N", title=None)).properties(
        title="PreCog of planted vs never-planted examples")


CHARTS = {"precog_accuracy_by_bin": precog_accuracy_by_bin, "precog_planted": precog_planted}


def save_chart(name: str, db, out_dir: str | Path) -> list[Path]:
    if name not in CHARTS:
        raise ConfigError(f"unknown chart {name!r}; known charts: {', '.join(CHARTS)}")
    chart = CHARTS[name](db)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.html"]
    chart.save(str(paths[0]), scale_factor=1.5)
    chart.save(str(paths[1]), inline=True)  # self-contained: works without a CDN
    return paths
