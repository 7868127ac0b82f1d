"""Trials, and the protocol every stage follows.

A trial is one unit of work with a deterministic id: a hash of its stage and parameters,
never a timestamp, so a rerun finds finished work by its completion marker and skips it.
It names the trials whose outputs it reads (`needs`), so a scheduler can tell when its
inputs are ready.

Every stage module (raymem/stages/) follows one protocol:

    STAGE: str                                       its name, the prefix of its trial ids
    WHERE: "driver" | "tune" | "data"                where its trials run
    plan(study, context) -> list[Trial]              what to run, from the study and the plan so far
    run(trial, runtime) -> dict[str, DataFrame]      one trial: table name -> its rows

A stage's `run` never writes result shards, seeds, moves anything to a device or saves a
checkpoint by hand: the `Runtime` (raymem/runtime.py) it is handed does that, and the
sweep (raymem/sweep.py) writes the returned tables with the trial's keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

Tables = dict[str, pl.DataFrame]


def trial_id(stage: str, params: dict) -> str:
    """`<stage>-<12 hex digits>`: sha1 of the stage and its parameters in canonical JSON."""
    key = json.dumps({"stage": stage, **params}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


@dataclass(frozen=True, eq=False)
class Trial:
    stage: str
    params: dict[str, Any]
    study: str
    results: str
    needs: tuple[str, ...] = ()  # trial ids whose outputs this trial reads
    # How it runs (cpus, gpus, device, precision, checkpoint_every): not part of its id,
    # since it changes no result beyond float rounding.
    runtime: dict[str, Any] = field(default_factory=dict)
    trial_id: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "trial_id", trial_id(self.stage, self.params))

    def __eq__(self, other) -> bool:
        return isinstance(other, Trial) and other.trial_id == self.trial_id

    def __hash__(self) -> int:
        return hash(self.trial_id)

    def to_config(self) -> dict[str, Any]:
        """The trial as plain data, for a Tune trial's config: Tune saves every config with its
        experiment as JSON, where an object would go in as a cloudpickled hex blob."""
        return {"stage": self.stage, "params": self.params, "study": self.study, "results": self.results,
                "needs": list(self.needs), "runtime": self.runtime}

    @staticmethod
    def from_config(config: dict[str, Any]) -> "Trial":
        return Trial(config["stage"], config["params"], config["study"], config["results"],
                     tuple(config["needs"]), config["runtime"])

    def label(self) -> str:
        """A short human name: stage and the parameters that tell trials apart."""
        p = self.params
        parts = [p.get(k) for k in ("task", "model", "technique") if p.get(k) is not None]
        parts += [f"{k}={p[k]}" for k in ("seed", "variant", "index", "pair", "start")
                  if p.get(k) not in (None, "")]
        return " ".join([self.stage, *map(str, parts)])


@dataclass
class PlanContext:
    """What the stages planned so far hand to the next one's `plan`."""
    results: str  # the store's URI
    examples_trials: dict[tuple[str, str], Trial]  # (task, model) -> its examples trial
    n_labels: dict[str, int]  # task -> classes
    n_layers: dict[str, int]  # model -> body layers
    trials: list[Trial] = field(default_factory=list)  # every trial planned so far

    def of_stage(self, stage: str) -> list[Trial]:
        return [t for t in self.trials if t.stage == stage]
