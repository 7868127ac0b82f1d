"""What Ray Tune costs a fine-tuning sweep: the same N trials run by raymem's sweep on a
local Ray with one CPU (so one trial at a time), and by a plain loop in one process.

Both paths run the same trials (raymem.trial.Trial) from `raymem.study.make_plan` of a small study
(raymem-mini, tweet_sentiment, seeds x {clean, noisy}) through the same
`raymem.sweep.run_trial`, on one thread each (Ray sets OMP_NUM_THREADS=1 for a 1-CPU
trial; the loop calls torch.set_num_threads(1)), into fresh results folders:

    raymem:       ray.init(num_cpus=1); raymem.sweep.run_sweep(...)   one trial at a time
    plain script: python -c "...; for trial in trials: run_trial(trial)"   a fresh process
                  that imports torch, transformers and raymem, as any script would
    plain warm:   the same loop inside this benchmark's process, imports already paid

overhead = sweep wall / plain wall - 1 (Ray's start is reported apart: paid once a study).
The sweep's cost splits into a fixed part per sweep (Tune's start, the trial worker's
process and imports) and a part per trial; both are estimated from the trials' own
wall_seconds (timed by run_trial around the stage runner). Repeats rotate the order of
the paths, so load from other work on the machine hits all alike; medians are reported.
Prints a table and writes benchmarks/out/sweep_overhead.json.

Usage: .venv/bin/python benchmarks/sweep_overhead.py [--repeats 3] [--seeds 4] [--train 240] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import polars as pl  # noqa: E402
import torch  # noqa: E402

import raymem.stages.finetune  # noqa: E402,F401  (the warm loop's imports are paid up front)
from raymem.config import Study  # noqa: E402
from raymem.study import make_plan  # noqa: E402
from raymem.sweep import run_sweep, run_trial  # noqa: E402

OUT = Path(__file__).parent / "out" / "sweep_overhead.json"
# The plain script: what a user would write without raymem's sweep.
SCRIPT = """
import pickle, sys, torch
torch.set_num_threads(1)
from raymem.sweep import run_trial
for trial in pickle.load(open(sys.argv[1], "rb")):
    assert run_trial(trial)["status"] == "ok"
"""


def study(results: str, seeds: int, train: int, epochs: int) -> Study:
    return Study.model_validate({
        "study": "sweep_overhead", "results": results, "models": ["raymem-mini"],
        "tasks": ["tweet_sentiment"], "seeds": list(range(1, seeds + 1)),
        "subsample": {"train": train, "test": 200}, "precog": {"enabled": False},
        "finetune": {"variants": ["clean", "noisy"], "epochs": epochs, "lr": 1e-3, "batch_size": 16,
                     "max_length": 64, "resources": {"cpus": 1}},
    })


def prepared(root: Path, name: str, args):
    """A fresh results folder holding the examples shards, and the plan's finetune trials."""
    plan = make_plan(study(str(root / name), args.seeds, args.train, args.epochs), log=lambda *_: None)
    for trial in plan.of_stage("examples"):
        key = (trial.params["task"], trial.params["model"])
        plan.store.write_rows("examples", "examples", trial.trial_id, plan.examples[key], plan.study.study)
        plan.store.mark_done(trial.trial_id, trial.params)
    return plan


def trial_walls(plan) -> dict[str, float]:
    runs = pl.from_arrow(plan.store.read_table("runs"))
    assert runs["status"].to_list() == ["ok"] * runs.height, runs
    return dict(zip(runs["trial_id"], runs["wall_seconds"]))


def predictions(plan) -> pl.DataFrame:
    return (pl.from_arrow(plan.store.read_table("predictions"))
            .drop("created_at").sort("trial_id", "checkpoint", "split", "example_id"))


def run_raymem(plan) -> float:
    start = time.perf_counter()
    failed = run_sweep("finetune", plan.of_stage("finetune"), plan.store, 0, log=lambda *_: None)
    wall = time.perf_counter() - start
    assert not failed, failed
    return wall


def run_plain_script(plan) -> float:
    trials = Path(plan.store.local_path("trials.pkl"))  # Trial objects: pickled, not JSON
    trials.write_bytes(pickle.dumps(plan.of_stage("finetune")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", SCRIPT, str(trials)], env=env, check=True)
    return time.perf_counter() - start


def run_plain_warm(plan) -> float:
    start = time.perf_counter()
    for trial in plan.of_stage("finetune"):
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


PATHS = {"plain_script": run_plain_script, "raymem": run_raymem, "plain_warm": run_plain_warm}
LABELS = {"plain_script": "plain loop, a fresh script", "raymem": "raymem run_sweep, Ray 1 CPU",
          "plain_warm": "plain loop, warm process"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=4, help="trials = 2 x seeds")
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
                plans[path] = prepared(root, f"{path}-{repeat}", args)
                walls[path].append(PATHS[path](plans[path]))
                inside[path].append(trial_walls(plans[path]))
                print(f"repeat {repeat + 1} {path:12s}: {walls[path][-1]:6.1f}s", flush=True)
            reference = predictions(plans["plain_warm"])
            identical.append(all(predictions(plans[p]).equals(reference) for p in PATHS))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    n = len(inside["plain_warm"][0])
    med = {path: statistics.median(ws) for path, ws in walls.items()}
    trial_med = {path: statistics.median(statistics.mean(d.values()) for d in ds) for path, ds in inside.items()}
    outside = {path: statistics.median(w - sum(d.values()) for w, d in zip(walls[path], inside[path]))
               for path in PATHS}
    overhead = {f"raymem_vs_{p}": med["raymem"] / med[p] - 1 for p in ("plain_script", "plain_warm")}
    result = {
        "trials": n, "train_examples": args.train, "test_examples": 200, "epochs": args.epochs,
        "model": "raymem-mini", "task": "tweet_sentiment", "repeats": args.repeats,
        "wall_seconds": walls, "trial_wall_seconds": inside,
        "median_wall_seconds": med, "median_trial_seconds": trial_med,
        "overhead": overhead,
        # wall time spent outside the trials' own timing, per sweep (all N trials)
        "seconds_outside_the_trials": outside,
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
    print("| path | wall (s) | raymem overhead vs this | mean trial, own timing (s) "
          "| outside the trials (s) |")
    print("|---|---|---|---|---|")
    for path in PATHS:
        vs = "-" if path == "raymem" else f"{overhead[f'raymem_vs_{path}']:+.1%}"
        print(f"| {LABELS[path]} | {med[path]:.1f} | {vs} | {trial_med[path]:.2f} | {outside[path]:.1f} |")
    print(f"\nRay start {ray_start:.1f}s (once per study, not in the walls); 1-CPU Ray worker: {worker}; "
          f"identical predictions on every path: {identical}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
