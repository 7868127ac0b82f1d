"""What preemption safety costs: a fine-tuning trial that keeps a progress checkpoint after
every epoch (model, AdamW state, schedule, random states, data order) against the same
trial keeping none.

raymem-mini (1.9M parameters) on 400 tweets of tweet_sentiment, the demo's settings, in
this process on one thread, with the store on local disk: runs alternate between the two,
so load from other work on the machine hits both alike. Prints a table and writes
benchmarks/out/progress_checkpoints.json.
Usage: .venv/bin/python benchmarks/progress_checkpoints.py [--epochs 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from raymem.runtime import PROGRESS, Runtime  # noqa: E402
from raymem.store import Store  # noqa: E402
from raymem.tasks import load_task  # noqa: E402
from raymem.train import Encoded, TrainSettings, fine_tune  # noqa: E402

OUT = Path(__file__).parent / "out" / "progress_checkpoints.json"


def one_run(data: Encoded, settings: TrainSettings, every: int, root: str) -> tuple[float, int]:
    """Wall seconds of one fine-tuning run, and the bytes of one progress checkpoint."""
    runtime = Runtime("cpu", "fp32", 1, Store(root), f"bench-{every}-{time.time_ns()}", checkpoint_every=every)
    model = runtime.load_classifier("raymem-mini", 3)
    start = time.perf_counter()
    fine_tune(model, data, settings, seed=1, runtime=runtime)
    wall = time.perf_counter() - start
    size = runtime.store.size("checkpoints", runtime.trial_id) if every else 0
    runtime.finish_training()
    return wall, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, splits = load_task("tweet_sentiment")
    train = splits["train"].sort("example_id").head(400)
    tokenizer = Runtime("cpu").load_tokenizer("raymem-mini", 64)
    data = Encoded(tokenizer, train["text"].to_list(), None, train["label"].to_numpy(), 64)
    settings = TrainSettings(epochs=args.epochs, lr=1e-3, batch_size=16, max_length=64)
    walls = {0: [], 1: []}
    size = 0
    with tempfile.TemporaryDirectory() as root:
        one_run(data, settings, 0, root)  # warm-up: imports, allocator, caches
        for _ in range(args.repeats):
            for every in (0, 1):
                wall, bytes_ = one_run(data, settings, every, root)
                walls[every].append(wall)
                size = max(size, bytes_)
    plain, kept = statistics.median(walls[0]), statistics.median(walls[1])
    ratios = [k / p for p, k in zip(walls[0], walls[1])]
    print(f"\nfine-tuning raymem-mini, 400 tweets, {args.epochs} epochs, 1 thread, {args.repeats} repeats")
    print(f"{'path':<42} {'median wall':>12} {'per epoch':>10}")
    print(f"{'no progress checkpoints':<42} {plain:>11.2f}s {plain / args.epochs:>9.3f}s")
    print(f"{'a progress checkpoint every epoch':<42} {kept:>11.2f}s {kept / args.epochs:>9.3f}s")
    print(f"overhead: median ratio {statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f}); "
          f"one checkpoint {size / 2**20:.1f} MiB ({PROGRESS})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"epochs": args.epochs, "repeats": args.repeats, "walls_plain": walls[0],
                               "walls_checkpointed": walls[1], "median_ratio": statistics.median(ratios),
                               "checkpoint_bytes": size, "machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count()}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
