"""What Ray Tune costs a fine-tuning sweep: the same N trials run by raymem's sweep on a
local Ray with one CPU (so one trial at a time), and by a plain loop in one process.

Both paths run the same trial dicts from `raymem.study.make_plan` of a small study
(raymem-mini, tweet_sentiment, seeds x {clean, noisy}) through the same
`raymem.sweep.run_trial`, on one thread each (Ray sets OMP_NUM_THREADS=1 for a 1-CPU
trial; the loop calls torch.set_num_threads(1)), into fresh results folders:

    ray:       ray.init(num_cpus=1); raymem.sweep.run_sweep(...)   one trial at a time
    ray_reuse: the same, with Tune's reuse_actors=True (a proposed fix for run_sweep,
               applied here from outside raymem by wrapping ray.tune.Tuner)
    plain:     for trial in trials: raymem.sweep.run_trial(trial)   in this (warm) process

overhead = sweep wall / plain wall - 1 (Ray's start is reported apart: paid once a study).
Per trial, the time Ray adds = (sweep wall - sum of the trials' own wall_seconds) / N;
the trials' own wall_seconds (timed by run_trial around the stage runner) are compared
too. Repeats alternate the order of the two paths, so load from other work on the
machine hits both alike; medians are reported. Prints a table and writes
benchmarks/out/sweep_overhead.json.

Usage: .venv/bin/python benchmarks/sweep_overhead.py [--repeats 2] [--train 240] [--epochs 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import polars as pl  # noqa: E402
import torch  # noqa: E402

import raymem.stages.finetune  # noqa: E402,F401  (the plain loop's imports are paid up front)
from raymem.config import Resources, Study  # noqa: E402
from raymem.study import make_plan  # noqa: E402
from raymem.sweep import run_sweep, run_trial  # noqa: E402

OUT = Path(__file__).parent / "out" / "sweep_overhead.json"


def study(results: str, train: int, epochs: int) -> Study:
    return Study.model_validate({
        "study": "sweep_overhead", "results": results, "models": ["raymem-mini"],
        "tasks": ["tweet_sentiment"], "seeds": [1, 2], "subsample": {"train": train, "test": 200},
        "precog": {"enabled": False},
        "finetune": {"variants": ["clean", "noisy"], "epochs": epochs, "lr": 1e-3, "batch_size": 16,
                     "max_length": 64, "resources": {"cpus": 1}},
    })


def prepared(root: Path, name: str, train: int, epochs: int):
    """A fresh results folder holding the examples shards, and the plan's finetune trials."""
    folder = root / name
    plan = make_plan(study(str(folder), train, epochs), log=lambda *_: None)
    for key, trial in plan.examples_trials.items():
        plan.store.write_rows("examples", "examples", trial["trial_id"], plan.examples[key], plan.study.study)
        plan.store.mark_done(trial["trial_id"], trial["params"])
    return plan


def trial_walls(plan) -> dict[str, float]:
    runs = pl.from_arrow(plan.store.read_table("runs"))
    assert runs["status"].to_list() == ["ok"] * runs.height, runs
    return dict(zip(runs["trial_id"], runs["wall_seconds"]))


def predictions(plan) -> pl.DataFrame:
    return (pl.from_arrow(plan.store.read_table("predictions"))
            .drop("created_at").sort("trial_id", "checkpoint", "split", "example_id"))


def run_ray(plan) -> float:
    start = time.perf_counter()
    failed = run_sweep("finetune", plan.finetune_trials, Resources(cpus=1), plan.store, 0,
                       log=lambda *_: None)
    wall = time.perf_counter() - start
    assert not failed, failed
    return wall


@contextlib.contextmanager
def reused_actors():
    """run_sweep's Tuner with tune_config=TuneConfig(reuse_actors=True): trials after the
    first run in the same actor process instead of a new one (Tune's default, False)."""
    from ray import tune

    original = tune.Tuner

    class Tuner(original):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("tune_config", tune.TuneConfig(reuse_actors=True))
            super().__init__(*args, **kwargs)

    tune.Tuner = Tuner
    try:
        yield
    finally:
        tune.Tuner = original


def run_ray_reuse(plan) -> float:
    with reused_actors():
        return run_ray(plan)


def run_plain(plan) -> float:
    start = time.perf_counter()
    for trial in plan.finetune_trials:
        assert run_trial(trial)["status"] == "ok"
    return time.perf_counter() - start


def ray_threads() -> dict:
    """What a 1-CPU Ray worker sees (Tune's trial actors are 1-CPU Ray actors)."""
    import ray

    @ray.remote(num_cpus=1)
    def probe():
        import torch as t
        return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch_threads": t.get_num_threads()}
    return ray.get(probe.remote())


PATHS = {"plain": run_plain, "ray": run_ray, "ray_reuse": run_ray_reuse}
LABELS = {"plain": "plain loop, one process", "ray": "raymem run_sweep, Ray 1 CPU",
          "ray_reuse": "run_sweep + reuse_actors=True"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train", type=int, default=240, help="train subsample per trial")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    root = Path(tempfile.mkdtemp(prefix="sweep_overhead-"))
    walls = {path: [] for path in PATHS}
    inside = {path: [] for path in PATHS}  # per repeat: the trials' own wall_seconds
    identical = []
    try:
        start = time.perf_counter()
        # address="local": a new Ray, never one a `ray start` recorded on this machine
        ray.init(address="local", num_cpus=1, log_to_driver=False, logging_level="ERROR")
        ray_start = time.perf_counter() - start
        worker = ray_threads()
        names = list(PATHS)
        for repeat in range(args.repeats):
            plans = {}
            for path in names[repeat % len(names):] + names[:repeat % len(names)]:  # rotate
                plans[path] = prepared(root, f"{path}-{repeat}", args.train, args.epochs)
                walls[path].append(PATHS[path](plans[path]))
                inside[path].append(trial_walls(plans[path]))
                print(f"repeat {repeat + 1} {path:9s}: {walls[path][-1]:6.1f}s", flush=True)
            reference = predictions(plans["plain"])
            identical.append(all(predictions(plans[p]).equals(reference) for p in PATHS))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    n = len(inside["plain"][0])
    med = {path: statistics.median(ws) for path, ws in walls.items()}
    trial_med = {path: statistics.median(statistics.mean(d.values()) for d in ds) for path, ds in inside.items()}
    outside = {path: statistics.median((w - sum(d.values())) / n for w, d in zip(walls[path], inside[path]))
               for path in PATHS}
    overhead = {path: med[path] / med["plain"] - 1 for path in PATHS if path != "plain"}
    result = {
        "trials": n, "train_examples": args.train, "test_examples": 200, "epochs": args.epochs,
        "model": "raymem-mini", "task": "tweet_sentiment", "repeats": args.repeats,
        "wall_seconds": walls, "trial_wall_seconds": inside,
        "median_wall_seconds": med, "median_trial_seconds": trial_med,
        "overhead": overhead,
        "seconds_per_trial_vs_plain": {p: (med[p] - med["plain"]) / n for p in overhead},
        "seconds_per_trial_outside_the_trial": outside,
        "ray_start_seconds": ray_start, "ray_worker": worker,
        "identical_predictions": identical,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0], "platform": platform.platform(),
        "torch": torch.__version__, "ray": ray.__version__,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{n} fine-tuning trials (raymem-mini, tweet_sentiment, {args.train} train / 200 test, "
          f"{args.epochs} epochs), one thread each, one at a time, median of {args.repeats}")
    print("| path | sweep wall (s) | overhead vs plain | per trial vs plain (s) "
          "| mean trial, own timing (s) | per trial outside the trial (s) |")
    print("|---|---|---|---|---|---|")
    for path in PATHS:
        vs = "-" if path == "plain" else f"{overhead[path]:+.1%}"
        per = "-" if path == "plain" else f"{result['seconds_per_trial_vs_plain'][path]:+.2f}"
        print(f"| {LABELS[path]} | {med[path]:.1f} | {vs} | {per} | {trial_med[path]:.2f} "
              f"| {outside[path]:.2f} |")
    print(f"\nRay start {ray_start:.1f}s (once per study, not in the walls); 1-CPU Ray worker: {worker}; "
          f"identical predictions on every path: {identical}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
