"""torch.compile (inductor) of a raymem-mini training step on the CPU, against eager.

One training step of raymem-mini as a classifier (batch --batch x --tokens, dropout on,
embeddings frozen, one thread), eager and compiled, in fp32 and under bf16 autocast. Prints
the first step's time (compiling, for the compiled model) and milliseconds per step
(medians over --steps after 5 warm-up steps); writes benchmarks/out/torch_compile.json.

Usage: .venv/bin/python benchmarks/torch_compile.py [--steps 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from raymem.models import embedding_parameters, load_classifier, model_spec

OUT = Path(__file__).parent / "out" / "torch_compile.json"


def classifier():
    model = load_classifier(model_spec("raymem-mini"), 3).train()
    for p in embedding_parameters(model):
        p.requires_grad_(False)
    return model


def time_steps(model, precision: str, ids, labels, steps: int) -> tuple[float, float]:
    """(seconds of the first step, median milliseconds per step after 5 warm-up steps)."""
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    times = []
    for _ in range(steps + 5):
        start = time.perf_counter()
        with autocast():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        F.cross_entropy(logits.float(), labels).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[0], 1e3 * statistics.median(times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (args.batch, args.tokens))
    labels = torch.randint(0, 3, (args.batch,))
    rows = []
    for precision in ("fp32", "bf16"):
        for mode in ("eager", "compiled"):
            model = classifier()
            first, median = time_steps(torch.compile(model) if mode == "compiled" else model, precision,
                                       ids, labels, args.steps)
            rows.append({"precision": precision, "mode": mode, "first_step_s": first, "median_ms": median})
    print(f"{'precision':<10} {'mode':<9} {'first step s':>12} {'ms per step':>12} {'vs eager':>9}")
    for r in rows:
        eager = next(e for e in rows if e["precision"] == r["precision"] and e["mode"] == "eager")
        print(f"{r['precision']:<10} {r['mode']:<9} {r['first_step_s']:>12.1f} {r['median_ms']:>12.1f} "
              f"{r['median_ms'] / eager['median_ms']:>8.2f}x")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
