"""Counterfactual memorisation (RESEARCH.md 2b): subset models and per-example mem / gen.

Each of `n_models` trials fine-tunes a model on a random half of the (perturbed)
training set and records, for every training example, the probability of its training
label. Then, per example, with "in" the models that trained on it and "out" the rest:

    mem(x) = mean p_in - mean p_out        gen(x) = mean p_out
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from raymem.config import Study
from raymem.models import load_classifier, load_tokenizer, model_spec
from raymem.store import Store
from raymem.sweep import make_trial
from raymem.train import Encoded, TrainSettings, fine_tune, predict

STAGE = "counterfactual"


def subset_mask(example_ids: list[str], subset_seed: int, index: int) -> np.ndarray:
    """A random half of the examples, fixed by (subset_seed, index) and the example ids."""
    order = np.argsort(np.asarray(example_ids))
    chosen = np.random.default_rng([subset_seed, index]).permutation(len(order))[: len(order) // 2]
    mask = np.zeros(len(order), dtype=bool)
    mask[order[chosen]] = True
    return mask


def plan(study: Study, examples_trials: dict[tuple[str, str], str], n_labels: dict[str, int],
         results: str) -> dict[tuple[str, str], list[dict]]:
    cf = study.counterfactual
    settings = study.finetune.model_dump(include={"lr", "batch_size", "max_length", "warmup", "clip",
                                                  "weight_decay", "freeze_embeddings", "epochs"})
    settings["epochs"] = cf.epochs or settings["epochs"]
    return {(task, model): [
        make_trial(STAGE, {"task": task, "model": model, "subset_seed": cf.subset_seed, "index": i,
                           "n_labels": n_labels[task], "examples_trial": examples_trials[task, model],
                           "settings": settings}, study.study, results)
        for i in range(cf.n_models)]
        for (task, model) in examples_trials}


def run_trial(trial: dict, store: Store, report) -> dict:
    p = trial["params"]
    s = TrainSettings(**p["settings"])
    examples = store.read_shard("examples", "examples", p["examples_trial"])
    train = examples.filter(pl.col("split") == "train").sort("example_id")
    labels = train["label"].to_numpy()  # the perturbed labels: noisy examples can only be memorised
    in_subset = subset_mask(train["example_id"].to_list(), p["subset_seed"], p["index"])
    spec = model_spec(p["model"])
    tokenizer = load_tokenizer(spec, s.max_length)
    torch.manual_seed(p["index"])
    model = load_classifier(spec, p["n_labels"], tokenizer.pad_token_id)
    texts, pairs = train["text"].to_list(), train["text_pair"].to_list()
    subset = np.flatnonzero(in_subset)
    fine_tune(model, Encoded(tokenizer, [texts[i] for i in subset], [pairs[i] for i in subset],
                             labels[subset], s.max_length), s, p["index"],
              lambda epoch: report(epoch=epoch) or False)
    probs = predict(model, Encoded(tokenizer, texts, pairs, labels, s.max_length))
    rows = pl.DataFrame({"task": p["task"], "model": p["model"], "example_id": train["example_id"],
                         "subset_index": p["index"], "in_subset": in_subset,
                         "p_label": probs[np.arange(len(labels)), labels]})
    store.write_rows("subset_predictions", STAGE, trial["trial_id"], rows, trial["study"])
    return {"device": "cpu"}


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


def summary_trial(subset_trials: list[dict], study: str, results: str) -> dict:
    return make_trial(STAGE + "-summary", {"subsets": sorted(t["trial_id"] for t in subset_trials)},
                      study, results)


def aggregate(summary: dict, subset_trials: list[dict], store: Store) -> None:
    """Once every subset model of a (task, model) finished: write its `counterfactual` rows."""
    if store.is_done(summary["trial_id"]):
        return
    shards = [store.read_shard("subset_predictions", STAGE, t["trial_id"]) for t in subset_trials]
    store.write_rows("counterfactual", STAGE, summary["trial_id"], mem_gen(pl.concat(shards)),
                     summary["study"])
    store.mark_done(summary["trial_id"], summary["params"])
