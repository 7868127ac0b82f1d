"""Probing's probes: every seed (and probe kind) stacked into one run, against one run each.

A probing trial trains, per probe seed, one noise probe per layer, and on the studied pair
two class probes per layer (training and original labels): 15 groups of L+1 small MLPs with
the original's settings (100 epochs, batches of 32). Each way trains them all on the same
synthetic pooled hidden states (L+1 layers, N examples, H wide):

    one run each:  the groups one after another, each its own batched run of L+1 probes
                   (raymem before: 5 noise-probe runs and 10 class-probe runs)
    stacked:       one batched run of every group of a kind (raymem now: one noise-probe
                   run, one class-probe run)

Both give the same predictions (checked). Prints the seconds per way (median over
--repeats) and their ratio; writes benchmarks/out/probe_stacking.json.

Usage: .venv/bin/python benchmarks/probe_stacking.py [--layers 5] [--examples 400] [--hidden 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from raymem.localise.probing import (ProbeGroup, ProbeSettings, _split, macro_f1, noisy_f1, probe_class_weights,
                                     best_epoch_predictions)

OUT = Path(__file__).parent / "out" / "probe_stacking.json"


def kinds(args, s: ProbeSettings):
    """(classes, groups, score) per probe kind: the noise probes, the two class probes."""
    rng = np.random.default_rng(0)
    noisy = rng.random(args.examples) < 0.15
    labels = torch.as_tensor(rng.integers(0, 3, args.examples))
    flags = torch.as_tensor(noisy).long()
    noise = [ProbeGroup(seed, split := _split(noisy, seed, s, "cpu"), flags,
                        probe_class_weights(s.class_weights, flags[split[0]])) for seed in s.seeds]
    label = [ProbeGroup(seed, _split(noisy, seed, s, "cpu"), labels, torch.ones(3))
             for _ in range(2) for seed in s.seeds]
    return [(2, noise, lambda p, t: noisy_f1(p.bool(), t.bool())), (3, label, lambda p, t: macro_f1(p, t, 3))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=5, help="L+1: raymem-mini's 4 layers and the embeddings")
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = ProbeSettings()
    hidden = torch.as_tensor(np.random.default_rng(1).normal(size=(args.layers, args.examples, args.hidden)),
                             dtype=torch.float32)
    ways = {"one run each": lambda classes, groups, score: torch.cat(
                [best_epoch_predictions(hidden, [g], classes, s, score) for g in groups]),
            "stacked": lambda classes, groups, score: best_epoch_predictions(hidden, groups, classes, s, score)}
    seconds, predictions = {w: [] for w in ways}, {}
    for _ in range(args.repeats):
        for way, train in ways.items():
            start = time.perf_counter()
            predictions[way] = [train(*kind) for kind in kinds(args, s)]
            seconds[way].append(time.perf_counter() - start)
    same = all(torch.equal(a, b) for a, b in zip(*predictions.values()))
    median = {w: statistics.median(t) for w, t in seconds.items()}
    ratio = median["one run each"] / median["stacked"]
    print(f"{'way':<14} {'runs':>5} {'seconds':>8}")
    for way in ways:
        print(f"{way:<14} {15 if way != 'stacked' else 2:>5} {median[way]:>8.2f}")
    print(f"stacked is {ratio:.2f}x faster (medians of {args.repeats}, 1 thread); same predictions: {same}")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"settings": vars(args), "seconds": seconds, "median_seconds": median,
                               "speedup": ratio, "same_predictions": same}, indent=1))


if __name__ == "__main__":
    main()
