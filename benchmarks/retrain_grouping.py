"""Layer retraining as one trial per window against one trial per start layer.

On a finished studies/demo_localise.yaml (its fine-tuned pairs in --results), each way
retrains every window of one pair, the way its trials would, each trial from nothing:

    per window:  L(L+1)/2 trials; each loads the memorised checkpoint, the pre-trained
                 weights, the tokenizer and the data, caches the frozen layers below its
                 window, retrains it and scores it (raymem's trials before grouping)
    per start:   L trials; each loads the same once and retrains the windows of its start
                 layer one after another over one cache of the frozen layers below it

Both give the same window accuracies (checked). Prints per way the total seconds (median
over --repeats), checkpoint loads and trials; writes benchmarks/out/retrain_grouping.json.

Usage: .venv/bin/raymem study studies/demo_localise.yaml   (once, for the checkpoints)
       .venv/bin/python benchmarks/retrain_grouping.py [--results results] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from raymem.config import load_study
from raymem.localise.retraining import Retraining, _accuracy, clean_split, retrain_window
from raymem.localise.swapping import windows as all_windows
from raymem.localise.technique import PairInputs
from raymem.runtime import Runtime
from raymem.study import make_plan
from raymem.train import TrainSettings

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "out" / "retrain_grouping.json"


def per_window(p: dict, runtime: Runtime) -> dict:
    accuracy = {}
    for start, end in all_windows(p["n_layers"]):
        pair = PairInputs(p, runtime)  # a trial of its own: everything loaded again
        clean_train, _ = clean_split(pair.noisy, p["seed"])
        model = retrain_window(pair.memorised, pair.pretrained(), start, end, pair.data.subset(clean_train),
                               TrainSettings(**p["retrain"]), seed=p["seed"])
        accuracy[start, end] = _accuracy(model, pair.data.subset(np.flatnonzero(pair.noisy)), 64)
    return accuracy


def per_start(p: dict, runtime: Runtime) -> dict:
    accuracy = {}
    for start in range(1, p["n_layers"] + 1):
        rows = Retraining().run({**p, "start": start}, PairInputs(p, runtime), runtime)["retrain_windows"]
        accuracy.update({(s, e): a for s, e, a in rows.select("window_start", "window_end", "noisy_acc").rows()})
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = load_study(REPO / "studies" / "demo_localise.yaml", {"results": args.results})
    plan = make_plan(study, log=lambda *_: None)
    p = next(t.params for t in plan.of_stage("localise") if t.params["technique"] == "retraining"
             and not t.params["pair"])
    if not plan.store.is_done(p["memorised_trial"]):
        raise SystemExit(f"{args.results}: run `raymem study studies/demo_localise.yaml --results "
                         f"{args.results}` first (this benchmark needs its fine-tuned pair)")
    runtime = Runtime("cpu", "fp32", threads=args.threads, store=plan.store)  # no trial id: nothing kept
    n_windows, n_layers = len(all_windows(p["n_layers"])), p["n_layers"]
    ways = {"per window": (per_window, n_windows), "per start": (per_start, n_layers)}
    times, results = {name: [] for name in ways}, {}
    for _ in range(args.repeats):
        for name, (run, _) in ways.items():
            start = time.perf_counter()
            results[name] = run(p, runtime)
            times[name].append(time.perf_counter() - start)
    same = all(abs(results["per window"][w] - results["per start"][w]) < 1e-9 for w in results["per window"])
    rows = [{"way": name, "trials": trials, "checkpoint_loads": 2 * trials,
             "seconds": statistics.median(times[name]), "runs": times[name]} for name, (_, trials) in ways.items()]
    print(f"pair {p['task']} / {p['model']} seed {p['seed']}: {n_layers} layers, {n_windows} windows, "
          f"{p['retrain']['epochs']} epochs each; same window accuracies: {same}")
    print(f"{'way':<11} {'trials':>6} {'loads':>6} {'seconds':>8}")
    for r in rows:
        print(f"{r['way']:<11} {r['trials']:>6} {r['checkpoint_loads']:>6} {r['seconds']:>8.1f}")
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    print(f"per start is {ratio:.2f}x faster; at 12 layers a pair's 78 windows take 12 trials (156 -> 24 loads)")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"pair": {k: p[k] for k in ("task", "model", "seed")}, "same_accuracies": same,
                               "threads": args.threads, "rows": rows, "speedup": ratio}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
