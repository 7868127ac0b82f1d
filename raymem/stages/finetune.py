"""Fine-tuning trials: one per (task, model, seed, variant).

The noisy variant trains on the perturbed labels of the `examples` table, the clean
variant on the original ones. Two checkpoints are kept (RESEARCH.md 2a): "memorised",
the first epoch whose training macro-F1 reaches `memorised_f1`, and "final". At each,
per-example predictions on the training and evaluation splits go to `predictions`.
"""

from __future__ import annotations

import tempfile

import numpy as np
import polars as pl
import torch

from raymem.config import Study
from raymem.models import load_classifier, load_tokenizer, model_spec
from raymem.store import Store
from raymem.sweep import make_trial
from raymem.train import Encoded, TrainSettings, fine_tune, macro_f1, predict

STAGE = "finetune"


def plan(study: Study, examples_trials: dict[tuple[str, str], str], n_labels: dict[str, int],
         results: str) -> list[dict]:
    ft = study.finetune
    settings = ft.model_dump(exclude={"enabled", "variants", "resources", "max_failures"})
    return [make_trial(STAGE, {"task": task, "model": model, "seed": seed, "variant": variant,
                               "n_labels": n_labels[task], "eval_split": study.eval_split,
                               "examples_trial": examples_trials[task, model], "settings": settings},
                       study.study, results)
            for task in study.task_names() for model in study.models
            for seed in study.seeds for variant in ft.variants]


def prediction_rows(probs: np.ndarray, split: pl.DataFrame, labels: np.ndarray,
                    checkpoint: str, epoch: int) -> pl.DataFrame:
    predicted = probs.argmax(-1)
    return pl.DataFrame({
        "example_id": split["example_id"], "split": split["split"],
        "checkpoint": [checkpoint] * len(labels), "epoch": [epoch] * len(labels),
        "label": labels, "predicted": predicted, "correct": predicted == labels,
        "p_label": probs[np.arange(len(labels)), labels]})


def run_trial(trial: dict, store: Store, report) -> dict:
    p = trial["params"]
    settings = dict(p["settings"])
    memorised_f1 = settings.pop("memorised_f1")
    s = TrainSettings(**settings)
    examples = store.read_shard("examples", "examples", p["examples_trial"])
    train = examples.filter(pl.col("split") == "train")
    evaluation = examples.filter(pl.col("split") == p["eval_split"])
    label_column = "label" if p["variant"] == "noisy" else "original_label"
    train_labels = train[label_column].to_numpy()
    eval_labels = evaluation["original_label"].to_numpy()

    spec = model_spec(p["model"])
    tokenizer = load_tokenizer(spec, s.max_length)
    torch.manual_seed(p["seed"])  # the classification head's initialisation
    model = load_classifier(spec, p["n_labels"], tokenizer.pad_token_id)
    train_data = Encoded(tokenizer, train["text"].to_list(), train["text_pair"].to_list(),
                         train_labels, s.max_length)
    eval_data = Encoded(tokenizer, evaluation["text"].to_list(), evaluation["text_pair"].to_list(),
                        eval_labels, s.max_length)
    rows, state = [], {"memorised_epoch": None, "storage_bytes": 0}

    def keep(checkpoint: str, epoch: int, train_probs: np.ndarray) -> None:
        rows.append(prediction_rows(train_probs, train, train_labels, checkpoint, epoch))
        rows.append(prediction_rows(predict(model, eval_data), evaluation, eval_labels, checkpoint, epoch))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)  # safetensors
            state["storage_bytes"] += store.put_dir(tmp, "checkpoints", trial["trial_id"], checkpoint)

    def after_epoch(epoch: int) -> bool:
        probs = predict(model, train_data)
        f1 = macro_f1(train_labels, probs.argmax(-1), p["n_labels"])
        report(epoch=epoch, train_macro_f1=f1)
        if state["memorised_epoch"] is None and f1 >= memorised_f1:
            state["memorised_epoch"] = epoch
            keep("memorised", epoch, probs)
        state["last_probs"] = probs
        return False

    fine_tune(model, train_data, s, p["seed"], after_epoch)
    keep("final", s.epochs, state["last_probs"])
    predictions = pl.concat(rows).with_columns(
        pl.lit(p["task"]).alias("task"), pl.lit(p["model"]).alias("model"),
        pl.lit(p["seed"]).alias("seed"), pl.lit(p["variant"]).alias("variant"))
    store.write_rows("predictions", STAGE, trial["trial_id"], predictions, trial["study"])
    return {"memorised_epoch": state["memorised_epoch"], "storage_bytes": state["storage_bytes"],
            "device": "cpu"}
