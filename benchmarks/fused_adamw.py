"""AdamW's fused kernel on the CPU, against torch's default CPU path (a loop over parameters).

One training step of raymem-mini as a classifier (a batch of --batch x --tokens, embeddings
frozen as in fine-tuning), on one thread: the forward and backward, then the optimiser step
timed apart. torch picks the per-parameter loop for CPU tensors unless told otherwise; the
fused kernel updates every parameter in one call. Both give the same parameters to float
rounding (checked after 20 steps). Prints milliseconds per optimiser step and per whole
step (medians over --steps), writes benchmarks/out/fused_adamw.json.

Usage: .venv/bin/python benchmarks/fused_adamw.py [--steps 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from raymem.models import embedding_parameters, load_classifier, model_spec

OUT = Path(__file__).parent / "out" / "fused_adamw.json"


def timed_steps(model, fused: bool, ids, labels, steps: int) -> tuple[list[float], list[float], torch.nn.Module]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=fused or None)
    whole, step = [], []
    torch.manual_seed(0)  # the same dropout masks for both ways
    for _ in range(steps):
        start = time.perf_counter()
        F.cross_entropy(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, labels).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        before_step = time.perf_counter()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        end = time.perf_counter()
        whole.append(end - start)
        step.append(end - before_step)
    return whole, step, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = load_classifier(model_spec("raymem-mini"), 3).train()
    for p in embedding_parameters(base):
        p.requires_grad_(False)
    ids = torch.randint(5, base.config.vocab_size, (args.batch, args.tokens))
    labels = torch.randint(0, 3, (args.batch,))
    results, models = {}, {}
    for way, fused in (("per-parameter loop", False), ("fused", True)):
        timed_steps(copy.deepcopy(base), fused, ids, labels, 5)  # warm-up
        _, _, models[way] = timed_steps(copy.deepcopy(base), fused, ids, labels, 20)  # the check's 20 steps
        whole, step, _ = timed_steps(copy.deepcopy(base), fused, ids, labels, args.steps)
        results[way] = {"optimiser_ms": 1e3 * statistics.median(step), "step_ms": 1e3 * statistics.median(whole)}
    difference = max((a - b).abs().max().item() for a, b in
                     zip(models["per-parameter loop"].parameters(), models["fused"].parameters()))
    print(f"{'way':<20} {'optimiser ms':>13} {'whole step ms':>14}")
    for way, r in results.items():
        print(f"{way:<20} {r['optimiser_ms']:>13.2f} {r['step_ms']:>14.1f}")
    loop, fused = results["per-parameter loop"], results["fused"]
    print(f"fused: optimiser {loop['optimiser_ms'] / fused['optimiser_ms']:.1f}x faster, whole step "
          f"{loop['step_ms'] / fused['step_ms']:.2f}x (medians of {args.steps}); largest parameter "
          f"difference after 20 steps {difference:.1e}")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"settings": vars(args), "results": results,
                               "max_parameter_difference_after_20_steps": difference}, indent=1))


if __name__ == "__main__":
    main()
