"""The `examples` table of each (task, model): built while planning (raymem.data.prepare_examples),
written by the driver before any trial runs; every other stage reads it."""

from __future__ import annotations

from raymem.config import Study
from raymem.trial import Trial

STAGE = "examples"
WHERE = "driver"


def examples_params(study: Study) -> dict:
    """What fixes a task's examples table besides the task and model."""
    params = {"data_seed": study.data_seed, "noise_ratio": study.noise_ratio,
              "subsample": dict(sorted(study.subsample.items()))}
    if study.subsample and study.subsample_strategy != "first":  # absent for `first`: ids stay as they were
        params["subsample_strategy"] = study.subsample_strategy
    if study.train_min_annotator_confidence is not None:  # absent when unset: ids stay as they were
        params["train_min_annotator_confidence"] = study.train_min_annotator_confidence
    return params


def examples_trial(study: Study, task: str, model: str, results: str) -> Trial:
    return Trial(STAGE, {"task": task, "model": model, **examples_params(study)}, study.study, results)
