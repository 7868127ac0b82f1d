"""Layer retraining over all 78 windows of a 12-layer model: reusing the frozen layers'
outputs (computed once per window start and replayed) against recomputing them every step.

Same model, examples, settings and seed for both; runs alternate so that load from other
work on the machine hits both alike. Prints a table and writes
benchmarks/out/retraining_reuse.json. Usage: .venv/bin/python benchmarks/retraining_reuse.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from raymem.localise.retraining import retraining_windows  # noqa: E402
from raymem.localise.swapping import windows  # noqa: E402
from raymem.pretrain import train_tokenizer  # noqa: E402
from raymem.train import Encoded, TrainSettings  # noqa: E402

OUT = Path(__file__).parent / "out" / "retraining_reuse.json"
LAYERS, HIDDEN, HEADS, FFN = 12, 64, 2, 256
N_CLEAN, N_NOISY, WORDS_PER_TEXT = 32, 16, (12, 30)
SETTINGS = TrainSettings(epochs=1, lr=3e-5, batch_size=8)
REPEATS = 5
WORDS = ("red green blue yellow cat dog fish bird run jump sit swim tall small big old river stone "
         "tree hill road town rain snow wind sun moon star ship boat car train").split()


def build():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(*WORDS_PER_TEXT))) for _ in range(N_CLEAN + N_NOISY)]
    labels = rng.integers(0, 2, len(texts))
    tokenizer = train_tokenizer(texts, 200, 64)
    clean = Encoded(tokenizer, texts[:N_CLEAN], None, labels[:N_CLEAN], 64)
    noisy = Encoded(tokenizer, texts[N_CLEAN:], None, labels[N_CLEAN:], 64)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=FFN, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    memorised = BertForSequenceClassification(config).eval()
    torch.manual_seed(1)
    pretrained = BertForSequenceClassification(config).eval()
    tokens = [len(f["input_ids"]) for f in clean.features + noisy.features]
    return memorised, pretrained, clean, noisy, tokens


def ceiling(n_layers: int) -> float:
    """The most reuse can save on a training step, counting layer passes of equal cost F:
    a layer below the window costs F (a forward, no gradient needed: reuse skips it), a
    window layer 3F (forward, input and weight gradients), a frozen layer above the window
    2F (forward, and the input gradient the window's gradient flows through)."""
    recompute = reuse = 0
    for start, end in windows(n_layers):
        above = 2 * (n_layers - end) + 3 * (end - start + 1)
        recompute += (start - 1) + above
        reuse += above
    return recompute / reuse


def main() -> None:
    torch.set_num_threads(1)  # a shared 2-core machine: one thread gives steadier timings
    memorised, pretrained, clean, noisy, tokens = build()
    # CPU seconds of this (single-threaded) process are what the method costs; wall seconds
    # also count waiting for a core, which on a shared machine is mostly other people's work
    cpu = {"reuse": [], "recompute": []}
    wall = {"reuse": [], "recompute": []}
    frames = {}
    for _ in range(REPEATS):
        for path in ("reuse", "recompute"):
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            frames[path] = retraining_windows(memorised, pretrained, clean, noisy, SETTINGS, seed=0,
                                              reuse=path == "reuse")
            cpu[path].append(time.process_time() - cpu_start)
            wall[path].append(time.perf_counter() - wall_start)
    cpu_median = {path: statistics.median(times) for path, times in cpu.items()}
    wall_median = {path: statistics.median(times) for path, times in wall.items()}
    result = {
        "model": f"BERT {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, FFN {FFN} (random init)",
        "windows": frames["reuse"].height, "clean_examples": N_CLEAN, "noisy_examples": N_NOISY,
        "mean_tokens": float(np.mean(tokens)), "epochs": SETTINGS.epochs, "batch_size": SETTINGS.batch_size,
        # the ceiling of the method: layer forwards below the window over all windows / all of them
        "skipped_layer_forward_share": sum(a - 1 for a, _ in windows(LAYERS)) / (len(windows(LAYERS)) * LAYERS),
        "ceiling_speedup": ceiling(LAYERS),
        "repeats": REPEATS, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cpu_seconds": cpu, "wall_seconds": wall, "median_cpu_seconds": cpu_median,
        "median_wall_seconds": wall_median, "speedup_cpu": cpu_median["recompute"] / cpu_median["reuse"],
        "speedup_wall": wall_median["recompute"] / wall_median["reuse"],
        "same_results": frames["reuse"].equals(frames["recompute"]),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{result['model']}; {result['windows']} windows x {SETTINGS.epochs} epoch(s), "
          f"{N_CLEAN} clean / {N_NOISY} noisy examples, {result['mean_tokens']:.0f} tokens on average")
    print(f"{'path':<10} {'CPU s':>7} {'wall s':>7}  CPU s per run; wall s per run")
    for path in cpu:
        print(f"{path:<10} {cpu_median[path]:>7.2f} {wall_median[path]:>7.2f}  "
              f"{', '.join(f'{t:.2f}' for t in cpu[path])}; {', '.join(f'{t:.2f}' for t in wall[path])}")
    print(f"{'speed-up':<10} {result['speedup_cpu']:>6.2f}x {result['speedup_wall']:>6.2f}x  (recompute / reuse, "
          f"medians)")
    print(f"layer forwards skipped by reuse: {result['skipped_layer_forward_share']:.0%} of all (the backward "
          f"pass, optimiser and tokenising are the same in both paths)")
    print(f"ceiling of the method: {result['ceiling_speedup']:.2f}x (layer passes per training step, "
          f"see ceiling(); backward through the frozen layers above the window cannot be skipped)")
    print(f"identical window scores: {result['same_results']}; load average "
          f"{result['load_average_1min']:.1f} on {os.cpu_count()} cores")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
