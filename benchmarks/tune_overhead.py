"""Tune's scheduling overhead per trial, and the driver's memory, against the sweep's size.

Trivial trials (the trial body swapped for one that only marks the trial done, as
benchmarks/scale_out.py does) on a local Ray of --cpus CPUs, through:

    raymem:       raymem.sweep.run_sweep, whose Searcher (raymem/schedule.py) hands Tune
                  one small configuration at a time;
    grid_search:  the plain alternative, and raymem's sweep before the Searcher: one Tuner
                  whose param_space is a `tune.grid_search` over every trial's config
                  (Tune's variant generator deep-copies that whole spec once per trial).

Per sweep size: wall time per trial (the call to its return, Tune's start included),
and the driver's peak RSS during the sweep (sampled every 0.1 s) above its RSS before.
grid_search stops at --grid-max trials (it grows about quadratically). Medians over
--repeats. Prints a table, writes benchmarks/out/tune_overhead.json.

raymem's sweep runs a long study as a series of Tune experiments of at most
--per-experiment trials (raymem.sweep.TRIALS_PER_EXPERIMENT): Tune keeps every trial's
state until its experiment ends. A huge value gives one experiment, as before. After each
experiment the sweep hands the freed heap back to the OS (raymem.sweep.return_freed_memory);
the driver's RSS right after each is recorded, and --no-trim leaves the heap as it is.

Usage: .venv/bin/python benchmarks/tune_overhead.py [--sizes 100 400 1600 6400] [--repeats 1]
           [--per-experiment 2000] [--no-trim] [--out benchmarks/out/tune_overhead.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import raymem.sweep
from raymem.store import Store
from raymem.trial import Trial
from sweep_harness import rss, run_sampling_rss, trial_body  # benchmarks/, beside this script

OUT = Path(__file__).parent / "out" / "tune_overhead.json"


def _done_entry(config):
    """The trial body, replaced: mark the trial done at once."""
    from ray import tune

    from raymem.store import Store

    trial = Trial.from_config(config["trial"]["spec"])
    Store(trial.results).mark_done(trial.trial_id, trial.params)
    tune.report({"done": True, "status": "ok"})


def with_peak_rss(fn) -> tuple[float, int]:
    """(fn's wall seconds, the peak RSS during it above the RSS before)."""
    before = rss()
    wall, peak = run_sampling_rss(fn)
    return wall, peak - before


def recording_rss_after_experiments(trim: bool, record: list) -> None:
    """Wrap the sweep's end-of-experiment step: trim (or not), then note the RSS in MiB."""
    original = raymem.sweep.return_freed_memory

    def after_experiment():
        if trim:
            original()
        record.append(round(rss() / 2**20))
    raymem.sweep.return_freed_memory = after_experiment


def trials(results: str, n: int) -> list[Trial]:
    return [Trial("bench", {"i": i}, "tune_overhead", results, runtime={"cpus": 1}) for i in range(n)]


def raymem_sweep(results: str, n: int, per_experiment: int = raymem.sweep.TRIALS_PER_EXPERIMENT) -> None:
    failed = raymem.sweep.run_sweep("bench", trials(results, n), Store(results), 0, log=lambda *_: None,
                                    per_experiment=per_experiment)
    assert not failed, failed[:3]


def grid_search_sweep(results: str, n: int) -> None:
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(_done_entry, {"cpu": 1}),
        param_space={"trial": tune.grid_search([{"trial_id": t.trial_id, "label": t.label(), "spec": t.to_config()}
                                                for t in trials(results, n)])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(Path(results) / "tune"), verbose=0,
                                  callbacks=raymem.sweep.tune_callbacks("grid", n)))
    tuner.fit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1600, 6400])
    parser.add_argument("--grid-max", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--per-experiment", type=int, default=raymem.sweep.TRIALS_PER_EXPERIMENT,
                        help="Tune trials per experiment in raymem's sweep (a huge value: one experiment)")
    parser.add_argument("--no-trim", action="store_true", help="keep the freed heap after each experiment")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rss_after = []
    recording_rss_after_experiments(not args.no_trim, rss_after)
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp, trial_body(_done_entry):
            raymem_sweep(str(Path(tmp) / "warm-up"), 20)  # workers and Tune imported
            for n in args.sizes:
                ours = functools.partial(raymem_sweep, per_experiment=args.per_experiment)
                for name, sweep in (("raymem", ours), ("grid_search", grid_search_sweep)):
                    if name == "grid_search" and n > args.grid_max:
                        continue
                    rss_after.clear()
                    runs = [with_peak_rss(lambda: sweep(str(Path(tmp) / f"{name}-{n}-{r}"), n))
                            for r in range(args.repeats)]
                    rows.append({"sweep": name, "trials": n,
                                 "ms_per_trial": statistics.median(w for w, _ in runs) / n * 1000,
                                 "peak_rss_mib": statistics.median(m for _, m in runs) / 2**20,
                                 "rss_after_experiments_mib": list(rss_after)})
                    print(f"{name:<12} {n:>6} trials: {rows[-1]['ms_per_trial']:.1f} ms/trial, "
                          f"peak RSS +{rows[-1]['peak_rss_mib']:.0f} MiB; RSS after each experiment "
                          f"{rss_after} MiB", flush=True)
    finally:
        ray.shutdown()
    print("\n| trials | raymem ms/trial | grid_search ms/trial | raymem peak RSS | grid_search peak RSS |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        mine = {r["sweep"]: r for r in rows if r["trials"] == n}
        grid = mine.get("grid_search")
        grid_ms = f"{grid['ms_per_trial']:.1f}" if grid else "-"
        grid_rss = f"+{grid['peak_rss_mib']:.0f} MiB" if grid else "-"
        print(f"| {n} | {mine['raymem']['ms_per_trial']:.1f} | {grid_ms} | "
              f"+{mine['raymem']['peak_rss_mib']:.0f} MiB | {grid_rss} |")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "machine": platform.platform(),
                                    "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
