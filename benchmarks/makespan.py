"""Makespan of a study's trials with stage barriers against none, on a local autoscaling Ray
(raymem.localcluster: a head without GPU and --nodes worker nodes of {CPU: 1, GPU: 1}).

The trials have the shape of a small localisation study, with sleeping bodies of known
length (raymem.sweep's trial body swapped for a sleep, as benchmarks/scale_out.py does):

    finetune        2 pairs (noisy, clean): one pair slow (--slow s each), one fast (--fast s)
    counterfactual  8 subset models of --subset s
    control         2 control models of --control s (one planted pair)
    hidden          1 s per pair (3 pairs: the two fine-tuned and the control one)
    localise        per pair 6 retraining windows of 1 s and swapping, gradients, probing
                    and centroids of 1.5 s each, needing the pair's two models (and hidden)
    localise-summary per pair, in the driver

barriers:  three `run_sweep`s one after another, as raymem ran a study before: training
           (fine-tuning, subset and control models), then hidden states, then localisation
           with its summaries.
flowing:   one `run_sweep` over all of them: each trial starts when the trials it needs are
           done, longest chain first (raymem/schedule.py).

Makespan = wall time from the first sweep's call to the last one's return (Tune's start of
each sweep included, as in a study). Idle share = 1 - (the trials' summed sleep) /
(worker slots x makespan). Medians over --repeats, alternating the modes. Prints a table,
writes benchmarks/out/makespan.json. About 5 minutes with the defaults on 2 cores.

Usage: .venv/bin/python benchmarks/makespan.py [--nodes 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

# before ray is imported: the cluster listens on 127.0.0.1 only (see raymem.localcluster)
from raymem.localcluster import CLIENT_ENV, LocalCluster

os.environ.update(CLIENT_ENV)

import raymem.sweep  # noqa: E402
from raymem.store import Store  # noqa: E402
from raymem.trial import Trial  # noqa: E402
from sweep_harness import trial_body  # noqa: E402  (benchmarks/, beside this script)

OUT = Path(__file__).parent / "out" / "makespan.json"
SLOT = {"cpus": 1, "gpus": 1}  # one worker node's slot per trial


def _sleep_entry(config):
    """raymem's trial body, replaced: sleep the trial's seconds, note when, finish it."""
    import json
    import time
    from pathlib import Path

    from ray import tune

    from raymem.store import Store

    trial = Trial.from_config(config["trial"]["spec"])
    start = time.time()
    time.sleep(trial.params["seconds"])
    Path(trial.results, "times", f"{trial.trial_id}.json").write_text(json.dumps([start, time.time()]))
    Store(trial.results).mark_done(trial.trial_id, trial.params)
    tune.report({"done": True, "status": "ok"})


def study_trials(results: str, args) -> list[Trial]:
    """The study's trials, every one after those it needs (as a plan lists them)."""
    def trial(stage, name, seconds=0.0, needs=(), **params):
        return Trial(stage, {"name": name, "seconds": seconds, **params}, "makespan", results,
                     tuple(t.trial_id for t in needs), SLOT if stage != "localise-summary" else {})
    pairs = {"slow": [trial("finetune", f"slow-{v}", args.slow) for v in ("noisy", "clean")],
             "fast": [trial("finetune", f"fast-{v}", args.fast) for v in ("noisy", "clean")],
             "control": [trial("control", f"control-{v}", args.control) for v in ("noisy", "clean")]}
    subsets = [trial("counterfactual", f"subset-{i}", args.subset) for i in range(8)]
    trials = [*subsets, *(t for pair in pairs.values() for t in pair)]
    for name, models in pairs.items():
        hidden = trial("hidden", f"{name}-hidden", 1.0, models)
        windows = [trial("localise", f"{name}-window-{w}", 1.0, models, retrain={"epochs": 1}) for w in range(6)]
        others = [trial("localise", f"{name}-{t}", 1.5, (*models, hidden))
                  for t in ("swapping", "gradients", "probing", "centroids")]
        summary = trial("localise-summary", f"{name}-summary", needs=(*windows, *others))
        trials += [hidden, *windows, *others, summary]
    return trials


def run(mode: str, root: Path, args) -> dict:
    results = root / f"{mode}-{time.monotonic_ns()}"
    (results / "times").mkdir(parents=True)
    trials = study_trials(str(results), args)
    store = Store(str(results))
    quiet = {"log": lambda *_: None,
             "run_in_driver": lambda t: store.mark_done(t.trial_id, t.params) or True}
    if mode == "flowing":
        sweeps = [trials]
    else:
        training = ("finetune", "counterfactual", "control")
        sweeps = [[t for t in trials if t.stage in training], [t for t in trials if t.stage == "hidden"],
                  [t for t in trials if t.stage in ("localise", "localise-summary")]]
    start = time.perf_counter()
    with trial_body(_sleep_entry):
        for sweep in sweeps:
            failed = raymem.sweep.run_sweep(mode, sweep, store, 0, **quiet)
            assert not failed, failed
    makespan = time.perf_counter() - start
    busy = sum(t.params["seconds"] for t in trials)
    return {"makespan_seconds": makespan, "busy_seconds": busy,
            "idle_share": 1 - busy / (args.nodes * makespan)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow", type=float, default=12.0)
    parser.add_argument("--fast", type=float, default=3.0)
    parser.add_argument("--subset", type=float, default=3.0)
    parser.add_argument("--control", type=float, default=6.0)
    args = parser.parse_args()
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(__import__("__main__"))
    cluster = LocalCluster(head_cpus=1, head_gpus=0, idle_timeout_s=60, workers={
        "worker": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": args.nodes, "max_workers": args.nodes}})
    cluster.start()
    runs = {"barriers": [], "flowing": []}
    try:
        cluster.wait_for(lambda nodes: sum(x["type"] == "worker" for x in nodes) == args.nodes,
                         60 + 30 * args.nodes, f"{args.nodes} worker nodes up")
        ray.init(address=cluster.address)
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                for mode in ("barriers", "flowing") if r % 2 == 0 else ("flowing", "barriers"):
                    runs[mode].append(run(mode, Path(tmp), args))
                    print(f"[{mode} {r + 1}/{args.repeats}] makespan {runs[mode][-1]['makespan_seconds']:.1f}s",
                          flush=True)
    finally:
        ray.shutdown()
        cluster.stop()
    median = {mode: {k: statistics.median(r[k] for r in rs) for k in ("makespan_seconds", "idle_share")}
              for mode, rs in runs.items()}
    busy = runs["flowing"][0]["busy_seconds"]
    ratio = median["barriers"]["makespan_seconds"] / median["flowing"]["makespan_seconds"]
    print(f"\n{len(study_trials('/x', args))} trials, {busy:.0f} s of work, {args.nodes} worker slots "
          f"(ideal makespan {busy / args.nodes:.1f} s); medians of {args.repeats}\n")
    print("| schedule | makespan | idle share of the worker slots |\n|---|---|---|")
    for mode in runs:
        print(f"| {mode} | {median[mode]['makespan_seconds']:.1f} s | {median[mode]['idle_share']:.0%} |")
    print(f"\nbarriers / flowing makespan: {ratio:.2f}x")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "cpus": os.cpu_count(),
                               "runs": runs, "median": median, "ratio": ratio}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
