"""torch.compile (inductor) of a raymem-mini training step on the CPU, against eager.

One training step of raymem-mini as a classifier (batch --batch x --tokens, dropout on,
embeddings frozen, one thread), eager and compiled, in fp32 and under bf16 autocast. Prints
the first step's time (compiling, for the compiled model) and milliseconds per step
(medians over --steps after 5 warm-up steps); writes benchmarks/out/torch_compile.json.

Usage: .venv/bin/python benchmarks/torch_compile.py [--steps 40]
"""

from __future__ import annotations

import json
from pathlib import Path

from cpu_bf16 import step_arguments, training_step  # benchmarks/, beside this script

OUT = Path(__file__).parent / "out" / "torch_compile.json"


def main() -> None:
    args = step_arguments(__doc__)
    rows = []
    for precision in ("fp32", "bf16"):
        for mode in ("eager", "compiled"):
            first, median = training_step(precision, args.steps, args.batch, args.tokens, mode == "compiled")
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
