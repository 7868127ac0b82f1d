"""Trials and the Ray Tune plumbing that runs them.

A trial is a plain dict: its stage, its parameters, a deterministic id (a hash of both)
and where results go. A finished trial leaves a completion marker, so a rerun of the
study skips it. Inside a trial, an exception is a real failure (a bug, bad data): it is
recorded in the `runs` table and not retried. A lost worker or node kills the trial
from outside; Tune retries that, up to `max_failures` times.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
import traceback

import polars as pl

from raymem.config import Resources
from raymem.store import Store

# stage name -> "module:function" running one trial: fn(trial, store, report) -> run info
STAGE_RUNNERS = {
    "finetune": "raymem.stages.finetune:run_trial",
    "counterfactual": "raymem.stages.counterfactual:run_trial",
    "control": "raymem.stages.control:run_trial",
    "localise": "raymem.stages.localise:run_trial",
}


def make_trial(stage: str, params: dict, study: str, results: str) -> dict:
    key = json.dumps({"stage": stage, **params}, sort_keys=True, default=str)
    trial_id = f"{stage}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return {"stage": stage, "trial_id": trial_id, "study": study, "results": results, "params": params}


def record_run(store: Store, trial: dict, status: str, wall: float, info: dict | None = None,
               error: str | None = None) -> None:
    """One row in `runs` for the trial: parameters, status, wall time and what it reported."""
    p, info = trial["params"], info or {}
    row = {"task": p.get("task"), "model": p.get("model"), "seed": p.get("seed"),
           "variant": p.get("variant"), "status": status, "error": error,
           "wall_seconds": round(wall, 3), "device": info.get("device", "cpu"),
           "storage_bytes": info.get("storage_bytes", 0),
           "memorised_epoch": info.get("memorised_epoch"),
           "params": json.dumps(p, sort_keys=True, default=str)}
    schema = {"seed": pl.Int64, "memorised_epoch": pl.Int64, "error": pl.Utf8, "task": pl.Utf8,
              "model": pl.Utf8, "variant": pl.Utf8, "storage_bytes": pl.Int64}
    store.write_rows("runs", trial["stage"], trial["trial_id"], pl.DataFrame([row], schema_overrides=schema),
                     trial["study"])


def run_trial(trial: dict, report=None) -> dict:
    """Run one trial in this process; record it; never raise for a failure inside it."""
    store = Store(trial["results"])
    module, name = STAGE_RUNNERS[trial["stage"]].split(":")
    runner = getattr(importlib.import_module(module), name)
    start = time.time()
    try:
        info = runner(trial, store, report or (lambda **_: None))
    except Exception:  # a real failure: record it, do not retry (see module docstring)
        error = traceback.format_exc(limit=8)
        record_run(store, trial, "failed", time.time() - start, error=error)
        return {"status": "failed", "error": error.strip().splitlines()[-1]}
    record_run(store, trial, "ok", time.time() - start, info)
    store.mark_done(trial["trial_id"], {"stage": trial["stage"], "params": trial["params"]})
    return {"status": "ok", **info}


def _tune_entry(config: dict) -> None:
    from ray import tune

    result = run_trial(config["trial"], report=lambda **metrics: tune.report(metrics))
    tune.report({"done": True, **{k: v for k, v in result.items() if k in ("status", "error")}})


def run_sweep(name: str, trials: list[dict], resources: Resources, store: Store,
              max_failures: int, log=print) -> list[dict]:
    """Run the unfinished trials (of one or more stages) as one Tune sweep, in the order
    given; return the trials that failed."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    # Tune's default TensorBoard logger keeps every trial's writer until the driver exits
    # (memory grows per trial); keep Tune's JSON and CSV results only.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    pending = [t for t in trials if not store.is_done(t["trial_id"])]
    for stage in dict.fromkeys(t["stage"] for t in trials):
        n = sum(t["stage"] == stage for t in trials)
        left = sum(t["stage"] == stage for t in pending)
        log(f"[{stage}] {n} trials: {n - left} already done, {left} to run "
            f"({resources.cpus:g} CPU, {resources.gpus:g} GPU each)")
    if not pending:
        return []
    tuner = tune.Tuner(
        tune.with_resources(_tune_entry, {"cpu": resources.cpus, "gpu": resources.gpus}),
        param_space={"trial": tune.grid_search(pending)},
        # One worker process serves trial after trial: no re-import of torch per trial.
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{pending[0]['study']}-{name}", storage_path=store.local_path("tune"),
            failure_config=tune.FailureConfig(max_failures=max_failures), verbose=1,
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()]))
    start = time.time()
    tuner.fit()
    failed = [t for t in pending if not store.is_done(t["trial_id"])]
    log(f"[{name}] {len(pending) - len(failed)} trials done, {len(failed)} failed, "
        f"in {time.time() - start:.0f}s")
    return failed
