"""The `examples` table of each (task, model): built while planning (raymem.data.prepare_examples),
written by the driver before any trial runs; every other stage reads it.

Its trial is the one that reads the task's data and the model's files, so its id holds their
fingerprints (`inputs`); every trial that reads its rows names its id, so an edited data file
or new weights rerun exactly the trials that read them, directly or through their inputs."""

from __future__ import annotations

from raymem.config import Study
from raymem.models import model_fingerprint, model_spec
from raymem.tasks import task_fingerprint
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


def task_definition(study: Study, name: str) -> str | dict:
    """A task of the study as `load_task` takes it: a registry name or a user task's fields."""
    for task in study.tasks:
        if task == name or (not isinstance(task, str) and task.name == name):
            return task if isinstance(task, str) else task.model_dump()
    return name  # a registry task named elsewhere (the control setup's auxiliary task)


def input_fingerprints(study: Study, task: str, model: str) -> dict[str, str]:
    """The fingerprints of the task's data and the model's files (file hashes; nothing loaded)."""
    return {"task": task_fingerprint(task_definition(study, task)), "model": model_fingerprint(model_spec(model))}


def examples_trial(study: Study, task: str, model: str, results: str) -> Trial:
    return Trial(STAGE, {"task": task, "model": model, **examples_params(study),
                         "inputs": input_fingerprints(study, task, model)}, study.study, results)
