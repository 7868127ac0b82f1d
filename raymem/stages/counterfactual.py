"""Counterfactual memorisation (Feldman & Zhang, 2020): subset models and per-example mem / gen.

Each of `n_models` trials fine-tunes a model on a random half of the (perturbed)
training set and records, for every training example, the probability of its training
label. Then, per example, with "in" the models that trained on it and "out" the rest:

    mem(x) = mean p_in - mean p_out        gen(x) = mean p_out
"""

from __future__ import annotations

import numpy as np
import polars as pl

from raymem.config import Study
from raymem.runtime import Runtime
from raymem.stages import search
from raymem.settings import resolve_settings
from raymem.stages.common import runtime_options
from raymem.store import Store
from raymem.train import TrainSettings, encode_split, fine_tune, predict, train_split
from raymem.trial import PlanContext, Tables, Trial

STAGE = "counterfactual"
WHERE = "tune"


def subset_mask(example_ids: list[str], subset_seed: int, index: int) -> np.ndarray:
    """A random half of the examples, fixed by (subset_seed, index) and the example ids."""
    order = np.argsort(np.asarray(example_ids))
    chosen = np.random.default_rng([subset_seed, index]).permutation(len(order))[: len(order) // 2]
    mask = np.zeros(len(order), dtype=bool)
    mask[order[chosen]] = True
    return mask


def plan(study: Study, context: PlanContext) -> list[Trial]:
    """`n_models` subset-model trials per (task, model), then one summary trial each."""
    cf, ft = study.counterfactual, study.finetune
    own = ft.model_dump(include={"lr", "batch_size", "max_length", "warmup", "clip",
                                 "weight_decay", "freeze_embeddings", "epochs", "batch_order"})
    own["epochs"] = cf.epochs or own["epochs"]
    own["lr"] = cf.lr or own["lr"]
    kept = tuple(key for key in ("epochs", "lr") if getattr(cf, key))  # set here, not by a search
    trials = []
    for task, model in ((t, m) for t in study.task_names() for m in study.models):
        examples = context.examples_trials[task, model]
        settings, searched = search.with_search(own, context, task, model, kept)
        subsets = [Trial(STAGE, {"task": task, "model": model, "subset_seed": cf.subset_seed, "index": i,
                                 "n_labels": context.n_labels[task], "examples_trial": examples.trial_id,
                                 "settings": settings}, study.study, context.results, (examples.trial_id, *searched),
                         runtime_options(ft.resources, ft.checkpoint_every))
                   for i in range(cf.n_models)]
        trials += [*subsets, summary_trial(subsets, study.study, context.results)]
    return trials


def run(trial: Trial, runtime: Runtime) -> Tables:
    p = trial.params
    s = TrainSettings(**resolve_settings(p["settings"], runtime.store))
    train = train_split(runtime.store, p["examples_trial"])
    labels = train["label"].to_numpy()  # the perturbed labels: noisy examples can only be memorised
    in_subset = subset_mask(train["example_id"].to_list(), p["subset_seed"], p["index"])
    tokenizer = runtime.load_tokenizer(p["model"], s.max_length)
    runtime.seed(p["index"])
    model = runtime.load_classifier(p["model"], p["n_labels"], tokenizer.pad_token_id)
    subset = np.flatnonzero(in_subset)
    data = encode_split(tokenizer, train, labels, s.max_length)
    fine_tune(model, data.subset(subset), s, p["index"],
              lambda epoch: runtime.report(epoch=epoch) or False, runtime)
    with runtime.autocast():
        probs = predict(model, data)
    runtime.finish_training()
    return {"subset_predictions": pl.DataFrame({
        "task": p["task"], "model": p["model"], "example_id": train["example_id"],
        "subset_index": p["index"], "in_subset": in_subset,
        "p_label": probs[np.arange(len(labels)), labels]})}


def mem_gen(subset_predictions: pl.DataFrame) -> pl.DataFrame:
    """Per example: mem, gen and how many subset models did / did not train on it."""
    return (subset_predictions.group_by("task", "model", "example_id").agg(
        pl.col("p_label").filter(pl.col("in_subset")).mean().alias("p_in"),
        pl.col("p_label").filter(~pl.col("in_subset")).mean().alias("p_out"),
        pl.col("in_subset").sum().cast(pl.Int64).alias("n_in"),
        (~pl.col("in_subset")).sum().cast(pl.Int64).alias("n_out"))
        .with_columns((pl.col("p_in") - pl.col("p_out")).alias("mem"), pl.col("p_out").alias("gen"))
        .select("task", "model", "example_id", "mem", "gen", "n_in", "n_out")
        .sort("task", "model", "example_id"))


def summary_trial(subset_trials: list[Trial], study: str, results: str) -> Trial:
    ids = tuple(t.trial_id for t in subset_trials)  # in subset order: mem_gen sums in this order
    return Trial(STAGE + "-summary", {"subsets": sorted(ids)}, study, results, ids)


def aggregate(summary: Trial, store: Store) -> Tables:
    """Once every subset model of a (task, model) finished: its `counterfactual` rows."""
    shards = [store.read_shard("subset_predictions", STAGE, t) for t in summary.needs]
    return {"counterfactual": mem_gen(pl.concat(shards))}
