"""PreCog trials: one per (task, model), scored by a Ray Data actor pool (raymem/data.py)."""

from __future__ import annotations

import polars as pl

from raymem.config import Study
from raymem.data import precog_rows
from raymem.models import ModelSpec
from raymem.stages.examples import examples_params
from raymem.trial import PlanContext, Tables, Trial

STAGE = "precog"
WHERE = "data"


def plan(study: Study, context: PlanContext) -> list[Trial]:
    settings = study.precog.model_dump(exclude={"actors", "enabled", "examples_per_batch"})
    # it scores the examples the driver holds, not their shard: its id takes their inputs' fingerprints
    return [Trial(STAGE, {"task": task, "model": model, **examples_params(study), "precog": settings,
                          "inputs": context.examples_trials[task, model].params["inputs"]},
                  study.study, context.results, (context.examples_trials[task, model].trial_id,))
            for task in study.task_names() for model in study.models]


def run(trial: Trial, examples: pl.DataFrame, model: ModelSpec, study: Study, info: dict,
        reserved=None, restarts: bool = True) -> Tables:
    """Score the examples of the study's PreCog splits (from the driver, through Ray Data, in
    the placement group `reserved` when given, restarting lost actors with `restarts`);
    `info` gets the device and precision the actors ran on."""
    examples = examples.filter(pl.col("split").is_in(study.precog.splits))
    rows = precog_rows(examples, model, study.precog, info, reserved, restarts)
    return {"precog": rows.with_columns(pl.lit(trial.params["task"]).alias("task"))}
