"""Fine-tuning trials: one per (task, model, seed, variant).

The noisy variant trains on the perturbed labels of the `examples` table, the clean
variant on the original ones. Two checkpoints are kept (Dankers & Titov, 2024): "memorised",
the first epoch whose training macro-F1 reaches `memorised_f1`, and "final". At each,
per-example predictions on the training and evaluation splits go to `predictions`.

A clean twin (`clean_twin`, planned by localisation with `localise.checkpoint: memorised`)
is the clean run again, stopped at the epoch its noisy model reached the memorised
checkpoint: the same seed and schedule, so it is the clean model as it was at that epoch.
It keeps that checkpoint as its "final" one and writes no predictions.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from raymem.config import Study
from raymem.runtime import Runtime
from raymem.stages import search
from raymem.settings import resolve_settings
from raymem.stages.common import runtime_options
from raymem.train import TrainSettings, encode_split, fine_tune, macro_f1, predict
from raymem.trial import PlanContext, Tables, Trial

STAGE = "finetune"
WHERE = "tune"


def plan(study: Study, context: PlanContext) -> list[Trial]:
    ft = study.finetune
    own = ft.model_dump(exclude={"enabled", "variants", "resources", "max_failures", "checkpoint_every"})
    trials = []
    for task in study.task_names():
        for model in study.models:
            examples = context.examples_trials[task, model]
            settings, searched = search.with_search(own, context, task, model)
            for seed in study.seeds:
                for variant in ft.variants:
                    params = {"task": task, "model": model, "seed": seed, "variant": variant,
                              "n_labels": context.n_labels[task], "eval_split": study.eval_split,
                              "examples_trial": examples.trial_id, "settings": settings}
                    trials.append(Trial(STAGE, params, study.study, context.results,
                                        (examples.trial_id, *searched),
                                        runtime_options(ft.resources, ft.checkpoint_every)))
    return trials


def prediction_rows(probs: np.ndarray, split: pl.DataFrame, labels: np.ndarray,
                    checkpoint: str, epoch: int) -> pl.DataFrame:
    predicted = probs.argmax(-1)
    return pl.DataFrame({
        "example_id": split["example_id"], "split": split["split"],
        "checkpoint": [checkpoint] * len(labels), "epoch": [epoch] * len(labels),
        "label": labels, "predicted": predicted, "correct": predicted == labels,
        "p_label": probs[np.arange(len(labels)), labels]})


def clean_twin(clean: Trial, noisy: Trial) -> Trial:
    """The clean trial again, to stop at the noisy trial's memorised epoch."""
    return Trial(STAGE, {**clean.params, "until_epoch_of": noisy.trial_id}, clean.study, clean.results,
                 (*clean.needs, noisy.trial_id), clean.runtime)


def memorised_epoch(store, trial_id: str) -> int | None:
    """The epoch at which a finished fine-tuning trial kept its memorised checkpoint (None: never)."""
    rows = store.read_shard("predictions", STAGE, trial_id).filter(pl.col("checkpoint") == "memorised")
    return int(rows["epoch"][0]) if rows.height else None


def run_clean_twin(p: dict, model, train_data, s: TrainSettings, runtime: Runtime) -> Tables:
    """The clean run's training, stopped at the noisy trial's memorised epoch (its final
    one if it never got there); that checkpoint kept as this trial's final one."""
    stop = memorised_epoch(runtime.store, p["until_epoch_of"]) or s.epochs
    fine_tune(model, train_data, s, p["seed"], lambda epoch: epoch >= stop, runtime)
    runtime.save_checkpoint(model, "final")
    runtime.finish_training()
    runtime.info["stopped_at_epoch"] = stop
    return {}


def run(trial: Trial, runtime: Runtime) -> Tables:
    p = trial.params
    settings = resolve_settings(p["settings"], runtime.store)
    memorised_f1 = settings.pop("memorised_f1")
    s = TrainSettings(**settings)
    examples = runtime.store.read_shard("examples", "examples", p["examples_trial"])
    train = examples.filter(pl.col("split") == "train")
    evaluation = examples.filter(pl.col("split") == p["eval_split"])
    train_labels = train["label" if p["variant"] == "noisy" else "original_label"].to_numpy()
    eval_labels = evaluation["original_label"].to_numpy()
    tokenizer = runtime.load_tokenizer(p["model"], s.max_length)
    runtime.seed(p["seed"])  # the classification head's initialisation
    model = runtime.load_classifier(p["model"], p["n_labels"], tokenizer.pad_token_id)
    train_data = encode_split(tokenizer, train, train_labels, s.max_length)
    if "until_epoch_of" in p:  # a clean twin (`clean_twin`)
        return run_clean_twin(p, model, train_data, s, runtime)
    eval_data = encode_split(tokenizer, evaluation, eval_labels, s.max_length)
    # Resumable state: a restarted trial finds its memorised checkpoint's predictions here.
    kept = {"memorised_epoch": None, "memorised": None}

    def probabilities(data) -> np.ndarray:
        with runtime.autocast():
            return predict(model, data)

    def after_epoch(epoch: int) -> bool:
        if kept["memorised_epoch"] is not None and epoch < s.epochs:
            # the training set's predictions serve to find the memorised checkpoint and to
            # record the final one: none are needed in between
            runtime.report(epoch=epoch)
            return False
        probs = probabilities(train_data)
        f1 = macro_f1(train_labels, probs.argmax(-1), p["n_labels"])
        runtime.report(epoch=epoch, train_macro_f1=f1)
        if kept["memorised_epoch"] is None and f1 >= memorised_f1:
            kept["memorised_epoch"] = epoch
            kept["memorised"] = [torch.from_numpy(probs), torch.from_numpy(probabilities(eval_data))]
            runtime.save_checkpoint(model, "memorised")
        kept["last_train"] = torch.from_numpy(probs)
        return False

    fine_tune(model, train_data, s, p["seed"], after_epoch, runtime, kept)
    rows = []
    if kept["memorised_epoch"] is not None:
        train_probs, eval_probs = (t.numpy() for t in kept["memorised"])
        rows += [prediction_rows(train_probs, train, train_labels, "memorised", kept["memorised_epoch"]),
                 prediction_rows(eval_probs, evaluation, eval_labels, "memorised", kept["memorised_epoch"])]
    runtime.save_checkpoint(model, "final")
    rows += [prediction_rows(kept["last_train"].numpy(), train, train_labels, "final", s.epochs),
             prediction_rows(probabilities(eval_data), evaluation, eval_labels, "final", s.epochs)]
    runtime.finish_training()
    runtime.info["memorised_epoch"] = kept["memorised_epoch"]
    predictions = pl.concat(rows).with_columns(
        pl.lit(p["task"]).alias("task"), pl.lit(p["model"]).alias("model"),
        pl.lit(p["seed"]).alias("seed"), pl.lit(p["variant"]).alias("variant"))
    return {"predictions": predictions}
