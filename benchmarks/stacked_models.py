"""Training several small models of one shape at once: one stacked, vmapped model against
each model stepped on its own, on raymem-mini (the counterfactual subset models' shape).

Per training step, M models each take their own batch (B examples of T tokens, a quarter
of them padding) through a forward, a backward and an AdamW step:

    each:     M separate models, one after another (what the counterfactual trials do)
    stacked:  torch.func.stack_module_state + functional_call under vmap: one model whose
              every weight has a leading dimension of M, one optimiser over the stacks

The stacked forward passes a 4-D attention mask: transformers' mask builder inspects the
2-D mask's values (data-dependent control flow, which vmap refuses). Medians over
--repeats of --steps steps. Prints a table, writes benchmarks/out/stacked_models.json.

Usage: .venv/bin/python benchmarks/stacked_models.py [--models 8] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from raymem.models import load_classifier, load_tokenizer, model_spec

OUT = Path(__file__).parent / "out" / "stacked_models.json"


def make_models(n: int, n_labels: int = 3):
    tokenizer = load_tokenizer(model_spec("raymem-mini"), 64)
    models = []
    for i in range(n):
        torch.manual_seed(i)
        models.append(load_classifier(model_spec("raymem-mini"), n_labels, tokenizer.pad_token_id).train())
    return models


def batches(n: int, batch: int, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n, batch, tokens), generator=g)
    mask = torch.ones(n, batch, tokens, dtype=torch.long)
    mask[:, :, tokens * 3 // 4:] = 0
    return ids, mask, torch.randint(0, 3, (n, batch), generator=g)


def each_step(models, ids, mask, labels):
    optimisers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]

    def step():
        for i, (model, optimiser) in enumerate(zip(models, optimisers)):
            F.cross_entropy(model(input_ids=ids[i], attention_mask=mask[i]).logits, labels[i]).backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
    return step


def stacked_step(models, ids, mask, labels):
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    optimiser = torch.optim.AdamW(params.values(), lr=1e-3)

    def logits(p, b, ids, mask):
        square = mask[:, None, None, :].bool().expand(-1, 1, mask.shape[-1], -1)
        return functional_call(base, (p, b), (), {"input_ids": ids, "attention_mask": square}).logits

    forward = vmap(logits, randomness="different")  # each model its own dropout

    def step():
        out = forward(params, buffers, ids, mask)
        # summed per-model mean losses: each stack's gradient is its own model's
        (F.cross_entropy(out.flatten(0, 1), labels.flatten(), reduction="none")
         .view(len(models), -1).mean(1).sum()).backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    return step


def seconds_per_step(step, steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        ids, mask, labels = batches(args.models, args.batch, args.tokens)
        times = {"each": [], "stacked": []}
        for _ in range(args.repeats):
            for name, make in (("each", each_step), ("stacked", stacked_step)):
                times[name].append(seconds_per_step(make(make_models(args.models), ids, mask, labels), args.steps))
        each, stacked = statistics.median(times["each"]), statistics.median(times["stacked"])
        rows.append({"threads": threads, "models": args.models, "each_s_per_step": each,
                     "stacked_s_per_step": stacked, "speedup": each / stacked, "runs": times})
    print(f"{'threads':>7} {'models':>6} {'each s/step':>12} {'stacked s/step':>15} {'speed-up':>9}")
    for r in rows:
        print(f"{r['threads']:>7} {r['models']:>6} {r['each_s_per_step']:>12.3f} "
              f"{r['stacked_s_per_step']:>15.3f} {r['speedup']:>8.2f}x")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "batch": args.batch, "tokens": args.tokens, "rows": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
