"""bf16 autocast on the CPU against fp32, by the instructions the CPU offers.

Why `precision: auto` is bf16 only on CPUs that multiply bf16 natively (AVX-512 BF16 or AMX):
elsewhere bf16 is emulated and slower than fp32. One training step of raymem-mini as a classifier
(batch --batch x --tokens, dropout on, embeddings frozen, one thread), forward in each
precision and backward, timed in a fresh process per instruction-set cap: oneDNN (the
matmuls) is held to it with ONEDNN_MAX_CPU_ISA and ATen's own kernels with
ATEN_CPU_CAPABILITY, as on a CPU that has no more. Caps above what this CPU has change
nothing. Prints milliseconds per step (medians over --steps) and the bf16/fp32 ratio per
cap; writes benchmarks/out/cpu_bf16.json.

Usage: .venv/bin/python benchmarks/cpu_bf16.py [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).parent / "out" / "cpu_bf16.json"
# (label, ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY)
CAPS = [("this CPU (no cap)", None, None), ("AVX-512 with bf16 dot products", "AVX512_CORE_BF16", "avx512"),
        ("AVX-512, no bf16", "AVX512_CORE", "avx512"), ("AVX2", "AVX2", "avx2")]

# Run in a fresh process per cap: the caps are read once, when torch loads.
CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from cpu_bf16 import training_step
steps, batch, tokens = map(int, sys.argv[2:5])
out = {"amx": bool(torch.cpu._is_amx_tile_supported())}
for precision in ("fp32", "bf16"):
    out[precision] = training_step(precision, steps, batch, tokens)[1]
print(json.dumps(out))
"""


def training_step(precision: str, steps: int, batch: int, tokens: int, compiled: bool = False) -> tuple[float, float]:
    """One raymem-mini classifier's training steps (dropout on, embeddings frozen, one
    thread): (seconds of the first step, median milliseconds per step after 5 warm-up steps).
    `compiled`: through torch.compile (benchmarks/torch_compile.py)."""
    import contextlib
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    from raymem.models import embedding_parameters, load_classifier, model_spec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_classifier(model_spec("raymem-mini"), 3).train()
    for p in embedding_parameters(model):
        p.requires_grad_(False)
    ids = torch.randint(5, model.config.vocab_size, (batch, tokens))
    labels = torch.randint(0, 3, (batch,))
    forward = torch.compile(model) if compiled else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    times = []
    for _ in range(steps + 5):
        start = time.perf_counter()
        with autocast():
            logits = forward(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        F.cross_entropy(logits.float(), labels).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[0], 1e3 * statistics.median(times[5:])


def step_arguments(doc: str) -> argparse.Namespace:
    """--steps, --batch and --tokens of `training_step`, from the command line."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    return parser.parse_args()


def main() -> None:
    args = step_arguments(__doc__)
    rows = []
    for label, isa, aten in CAPS:
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
        env |= {"ONEDNN_MAX_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": aten} if isa else {}
        child = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(args.steps),
                                str(args.batch), str(args.tokens)],
                               env=env, capture_output=True, text=True, check=True)
        rows.append({"cap": label, **json.loads(child.stdout.strip().splitlines()[-1])})
    print(f"this CPU has AMX: {rows[0]['amx']}")
    print(f"{'instructions':<32} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16 / fp32':>12}")
    for r in rows:
        print(f"{r['cap']:<32} {r['fp32']:>8.1f} {r['bf16']:>8.1f} {r['bf16'] / r['fp32']:>11.2f}x")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
