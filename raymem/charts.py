"""Altair charts built from named query results; saved as PNG and self-contained HTML."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import polars as pl

from raymem.checks import wilson_interval
from raymem.errors import ConfigError, did_you_mean
from raymem.queries import query


def precog_accuracy_by_bin(db) -> alt.Chart:
    low, high = wilson_interval(pl.col("accuracy") * pl.col("n_examples"), pl.col("n_examples"))
    data = query("precog_accuracy_by_bin", db).with_columns(
        (pl.col("bin_start") + (pl.col("bin_end") - pl.col("bin_start")) / 2).alias("bin_mid"),
        ("k=" + pl.col("k").cast(pl.Utf8)).alias("k"), low.alias("low"), high.alias("high"))
    base = alt.Chart(data).encode(
        x=alt.X("bin_mid:Q", title="PreCog (bin centre)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("task:N"))
    title = "accuracy after fine-tuning (95% Wilson interval)"
    lines = base.mark_line(point=True).encode(
        y=alt.Y("accuracy:Q", title=title, scale=alt.Scale(zero=False)),
        tooltip=["task", "k", "bin_start", "bin_end", "accuracy", "low", "high", "n_examples"])
    # examples per bin are in the tooltip: as text labels they overlapped across tasks
    bars = base.mark_errorbar().encode(y=alt.Y("low:Q", title=title), y2="high:Q")
    return (lines + bars).properties(width=260, height=200).facet(
        column=alt.Column("k:N", title=None), row=alt.Row("model:N", title=None)).properties(
        title="Accuracy by PreCog bin, with 95% intervals")


def precog_planted(db) -> alt.Chart:
    data = query("precog_distribution", db).with_columns(
        ("k=" + pl.col("k").cast(pl.Utf8)).alias("k"),
        pl.col("planted_count").cast(pl.Utf8).alias("planted"))
    # facets and legend in numeric order (as text, "16" would sort before "4")
    order = [str(n) for n in sorted(data["planted_count"].unique().to_list())]
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("bin_start:O", title="PreCog bin (start)"),
        y=alt.Y("share:Q", title="share of examples"),
        color=alt.Color("planted:N", title="times planted", sort=order),
        tooltip=["planted", "bin_start", "share", "n_examples"],
    ).properties(width=220, height=160).facet(
        column=alt.Column("planted:N", title="times planted in pre-training", sort=order),
        row=alt.Row("k:N", title=None)).properties(
        title="PreCog of planted vs never-planted examples")


def localisation(db) -> alt.Chart:
    """Per-layer profiles: one small multiple per task, a line per technique, a band of one
    sd over seeds (none with one seed)."""
    data = query("layer_profile", db).with_columns(
        (pl.col("score") - pl.col("score_sd")).alias("low"), (pl.col("score") + pl.col("score_sd")).alias("high"))
    title = "share of memorisation score (+- one sd over seeds)"
    base = alt.Chart(data).encode(x=alt.X("layer:O", title="layer"), color=alt.Color("technique:N"))
    lines = base.mark_line(point=True).encode(
        y=alt.Y("score:Q", title=title), tooltip=["task", "technique", "layer", "score", "score_sd", "n_seeds"])
    band = base.mark_errorband(opacity=0.2).encode(y=alt.Y("low:Q", title=title), y2="high:Q")
    return (lines + band).properties(width=220, height=160).facet(
        column=alt.Column("task:N", title=None), row=alt.Row("model:N", title=None)).properties(
        title="Where memorisation sits, by technique")


def windows(db) -> alt.Chart:
    """Window heatmaps for swapping and retraining: window size by start layer."""
    data = query("window_heatmap", db)
    return alt.Chart(data).mark_rect().encode(
        x=alt.X("window_start:O", title="first layer of the window"),
        y=alt.Y("window_size:O", title="window size", sort="descending"),
        color=alt.Color("error:Q", title="memorisation error", scale=alt.Scale(domain=[0, 1])),
        tooltip=["task", "technique", "window_start", "window_size", "error", "noisy_acc"],
    ).properties(width=160, height=140).facet(
        column=alt.Column("task:N", title=None), row=alt.Row("technique:N", title=None)).properties(
        title="Memorisation error per layer window")


def mcog(db) -> alt.Chart:
    """M-CoG per task by technique (and the mean over techniques), +- one sd over seeds."""
    data = query("mcog_by_task", db).with_columns(
        (pl.col("mcog") - pl.col("mcog_sd")).alias("low"), (pl.col("mcog") + pl.col("mcog_sd")).alias("high"))
    base = alt.Chart(data).encode(y=alt.Y("task:N", title=None), color=alt.Color("technique:N"))
    points = base.mark_point(filled=True, size=80).encode(
        x=alt.X("mcog:Q", title="M-CoG (layer), +- one sd over seeds"), shape=alt.Shape("model:N"),
        tooltip=["task", "model", "technique", "mcog", "mcog_sd", "n_seeds"])
    spread = base.mark_rule().encode(x="low:Q", x2="high:Q")  # none with one seed (sd null)
    return (points + spread).properties(width=360, height=120, title="Memorisation centre of gravity per task")


def counterfactual(db) -> alt.Chart:
    """mem of the noisy vs the clean training examples, per task (the share of each group per bin)."""
    data = query("counterfactual_distribution", db)
    return alt.Chart(data).mark_rect(opacity=0.55).encode(
        x=alt.X("bin_start:Q", title="counterfactual memorisation (mem)", scale=alt.Scale(domain=[-1, 1])),
        x2="bin_end:Q", y2=alt.datum(0),  # each bar spans its bin, from zero
        y=alt.Y("share:Q", title="share of the group"),
        color=alt.Color("label:N", title="training label", sort=["noisy", "clean"]),
        tooltip=["task", "model", "label", "bin_start", "bin_end", "share", "n_examples"],
    ).properties(width=240, height=160).facet(
        column=alt.Column("task:N", title=None), row=alt.Row("model:N", title=None)).properties(
        title="Counterfactual memorisation of relabelled vs clean training examples")


def control(db) -> alt.Chart:
    """Control accuracy@2 per technique, chance-normalised, (a - c) / (1 - c), with its 95%
    Wilson interval over runs, and the published value on the same scale. The published
    values (control_accuracy's `published_at_2`) are of 12-layer models, chance 1/6; a model
    with fewer layers has a higher chance, so raw accuracies on one axis would not compare."""
    data = query("control_accuracy", db)
    chance = pl.col("chance_at_2")
    data = data.with_columns(((pl.col("at_2_low") - chance) / (1 - chance)).alias("normalised_low"),
                             ((pl.col("at_2_high") - chance) / (1 - chance)).alias("normalised_high"),
                             pl.lit(0.0).alias("chance_normalised"))
    lowest = min(0.0, float(data["normalised_low"].min() or 0.0))
    title = "accuracy@2, (a - chance) / (1 - chance)"
    base = alt.Chart(data).encode(x=alt.X("technique:N", title=None, sort=list(data["technique"])))
    bars = base.mark_bar(opacity=0.7).encode(
        y=alt.Y("normalised_at_2:Q", title=title, scale=alt.Scale(domain=[lowest, 1])),
        tooltip=["technique", "n_runs", "accuracy_at_2", "at_2_low", "at_2_high", "chance_at_2",
                 "normalised_at_2", "published_at_2", "published_normalised_at_2"])
    interval = base.mark_errorbar().encode(y=alt.Y("normalised_low:Q", title=title), y2="normalised_high:Q")
    published = base.mark_tick(color="black", thickness=3, size=30).encode(
        y=alt.Y("published_normalised_at_2:Q", title=title))
    chance_rule = alt.Chart(data).mark_rule(strokeDash=[4, 4], color="gray").encode(
        y=alt.Y("mean(chance_normalised):Q", title=title))
    return (bars + interval + published + chance_rule).properties(width=260, height=200).facet(
        column=alt.Column("model:N", title=None)).properties(
        title="Control setup: accuracy@2 per technique, chance-normalised (dashed: chance; 95% Wilson "
              "interval over runs; black tick: published, 12-layer models, chance 1/6, on the same scale)")


def neuron_recall(db) -> alt.Chart:
    """Recall@k of the planted units per neuron technique, its 95% t interval over runs, and
    chance (dashed)."""
    data = query("neuron_recall", db)
    title = "recall@k of the planted units (95% interval)"
    base = alt.Chart(data).encode(x=alt.X("technique:N", title=None, sort=list(data["technique"])))
    bars = base.mark_bar(opacity=0.7).encode(
        y=alt.Y("recall_at_k:Q", title=title, scale=alt.Scale(domain=[0, 1])),
        tooltip=["technique", "n_runs", "k", "recall_at_k", "low", "high", "chance", "times_chance"])
    interval = base.mark_errorbar().encode(y=alt.Y("low:Q", title=title), y2="high:Q")
    chance = alt.Chart(data).mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.Y("mean(chance):Q", title=title))
    return (bars + interval + chance).properties(width=260, height=200).facet(
        column=alt.Column("model:N", title=None)).properties(
        title="Neurons: recall@k of the planted units per technique (dashed: chance)")


def neuron_deletion(db) -> alt.Chart:
    """Accuracy on the memorised and on held-out clean examples as each technique's top
    units are dropped; random sets as the floor."""
    data = query("neuron_deletion", db).unpivot(
        index=["model", "kind", "technique", "percent"], on=["memorised_acc", "heldout_acc"],
        variable_name="examples", value_name="accuracy")
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("percent:Q", title="top units dropped (% of all FFN units)"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("technique:N"),
        strokeDash=alt.StrokeDash("examples:N", legend=None, scale=alt.Scale(
            domain=["heldout_acc", "memorised_acc"], range=[[1, 0], [4, 3]])),
        tooltip=["model", "kind", "technique", "percent", "examples", "accuracy"],
    ).properties(width=240, height=180).facet(
        column=alt.Column("kind:N", title=None), row=alt.Row("model:N", title=None)).properties(
        title="Neurons: deletion test (dashed: memorised examples; solid: held-out clean examples)")


def neuron_layer_agreement(db) -> alt.Chart:
    """Spearman over layers of each neuron technique's layer profile against each layer
    technique's scores, on the noisy models: one cell per pair, one panel per model."""
    data = query("neuron_layer_agreement", db).group_by(
        "model", "neuron_technique", "layer_technique").agg(pl.col("spearman").mean(), pl.len().alias("n_seeds"))
    base = alt.Chart(data).encode(x=alt.X("layer_technique:N", title="layer technique"),
                                  y=alt.Y("neuron_technique:N", title="neuron technique"))
    cells = base.mark_rect().encode(
        color=alt.Color("spearman:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue")),
        tooltip=["model", "neuron_technique", "layer_technique", "spearman", "n_seeds"])
    labels = base.mark_text().encode(text=alt.Text("spearman:Q", format=".2f"))
    return (cells + labels).properties(width=200, height=200).facet(
        column=alt.Column("model:N", title=None)).properties(
        title="Neurons against layers: Spearman over layers of each neuron technique's summed profile and "
              "each layer technique's scores (noisy models, mean over seeds)")


# name -> (builder, the result tables it needs, the query its data comes from)
CHARTS = {"precog_accuracy_by_bin": (precog_accuracy_by_bin, {"precog", "predictions"}, "precog_accuracy_by_bin"),
          "precog_planted": (precog_planted, {"precog", "examples"}, "precog_distribution"),
          "localisation": (localisation, {"layer_scores"}, "layer_profile"),
          "windows": (windows, {"window_scores"}, "window_heatmap"),
          "counterfactual": (counterfactual, {"counterfactual", "examples"}, "counterfactual_distribution"),
          "mcog": (mcog, {"mcog"}, "mcog_by_task"),
          "control": (control, {"control_accuracy"}, "control_accuracy"),
          "neuron_recall": (neuron_recall, {"neuron_summary"}, "neuron_recall"),
          "neuron_deletion": (neuron_deletion, {"neuron_deletion"}, "neuron_deletion"),
          "neuron_layer_agreement": (neuron_layer_agreement, {"neuron_layers", "layer_scores"},
                                     "neuron_layer_agreement")}


def available_charts(db) -> list[str]:
    """The charts whose tables the database holds (the stages the study ran)."""
    import duckdb

    from raymem.store import table_names

    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = table_names(con)
    finally:
        con.close()
    return [name for name, (_, needs, _) in CHARTS.items() if needs <= tables]


def build_chart(name: str, db) -> alt.Chart:
    if name not in CHARTS:
        raise ConfigError(f"unknown chart {name!r}{did_you_mean(name, CHARTS)}; known charts: {', '.join(CHARTS)}")
    return CHARTS[name][0](db)


class ScriptSafeJSON(json.JSONEncoder):
    """JSON that cannot end the <script> the chart's HTML embeds it in: '<', '>' and '&' as
    \\u escapes, the same strings to JavaScript, so a task or label named `</script>...` stays
    data. ('<' and the others occur only inside JSON strings, so the text stays valid JSON.)"""

    def encode(self, o) -> str:
        return super().encode(o).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def save_chart(name: str, db, out_dir: str | Path) -> list[Path]:
    chart = build_chart(name, db)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.html"]
    _save_whole(chart, paths[0], scale_factor=1.5)
    # self-contained (works without a CDN), its data escaped for the script it sits in
    _save_whole(chart, paths[1], inline=True, json_kwds={"cls": ScriptSafeJSON})
    return paths


def _save_whole(chart: alt.Chart, path: Path, **options) -> None:
    """Save into a temporary file beside `path`, then rename it over `path`: a failed save
    (a full disk) leaves the previous chart or none, never a truncated one for a report."""
    import os
    import uuid

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # created as the chart would be
    try:
        chart.save(str(tmp), format=path.suffix.lstrip("."), **options)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
