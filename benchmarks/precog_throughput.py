"""PreCog throughput: the batched PrecogScorer against the loops a user would write.

One run, one model, the same tweets (test split of `tweet_sentiment`), the same torch
thread count for every method:
  (a) scorer:   raymem's PrecogScorer (all single-token-masked copies in large batches)
  (b) pipeline: transformers `fill-mask` pipeline, top_k=50, one call per masked copy
  (c) bs-1:     one model(**inputs) forward per masked copy, full logits, topk, log_softmax
The unit of work is one masked copy, so the slow baselines may run on fewer examples.
Repeats alternate the methods so that load from other work hits all alike; medians are
over the quiet repeats (matmul peak before and after within 20% of the run's best). Also the scorer's model FLOP/s against this machine's float32 matmul peak
(1024x1024 torch.matmul, measured in the same run, same threads).

Usage: .venv/bin/python benchmarks/precog_throughput.py [--model PATH] [--threads 2]
Writes benchmarks/out/precog_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizer threads would skew 2 cores

import torch  # noqa: E402
import transformers  # noqa: E402

from raymem.measures.precog import PrecogScorer, PrecogSettings, masked_copies  # noqa: E402
from raymem.models import ASSETS, ModelSpec, load_masked_lm  # noqa: E402
from raymem.tasks import load_task  # noqa: E402

OUT = Path(__file__).parent / "out" / "precog_throughput.json"
KS = (1, 50)
QUIET = 0.8  # a repeat counts when the matmul peak around it is within 20% of the best


def tweets(n: int) -> list[str]:
    _, splits = load_task("tweet_sentiment")
    return splits["test"].sort("example_id").head(n)["text"].to_list()  # fixed, hash order


def run_scorer(scorer: PrecogScorer, texts: list[str]) -> int:
    return int(scorer.score(texts)["n_units"].sum())


def run_pipeline(fill_mask, tokenizer, texts: list[str]) -> int:
    """What a user writes: mask one token of the text, ask the pipeline for its top 50."""
    copies = 0
    for text in texts:
        tokens = tokenizer.tokenize(text)
        for i, target in enumerate(tokenizer.convert_tokens_to_ids(tokens)):
            masked = tokenizer.convert_tokens_to_string(tokens[:i] + [tokenizer.mask_token] + tokens[i + 1:])
            predicted = [p["token"] for p in fill_mask(masked)]
            _ = {k: target in predicted[:k] for k in KS}  # the user's PreCog hits
            copies += 1
    return copies


@torch.no_grad()
def run_bs1(model, tokenizer, texts: list[str]) -> int:
    """One forward per masked copy with the model's full logits."""
    copies = 0
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=tokenizer.model_max_length)
        real = [i for i, s in enumerate(enc.sequence_ids(0)) if s is not None]
        for i in real:
            ids = enc["input_ids"].clone()
            target = int(ids[0, i])
            ids[0, i] = tokenizer.mask_token_id
            logits = model(**{**enc, "input_ids": ids}).logits[0, i]
            top = torch.topk(logits, max(KS)).indices
            _ = (top == target).any(), torch.log_softmax(logits, -1)[target]
            copies += 1
    return copies


def scorer_flops(scorer: PrecogScorer, texts: list[str]) -> float:
    """FLOPs of the scorer's forwards on `texts`, following what it computes.

    Its batches hold equal-length copies (no padding), so copies can be counted one by
    one. Matmuls: 2 x (Linear weights) per token they run on; attention: 4 x length x
    hidden per query per layer (QK^T and AV). On the BERT path the last layer runs keys
    and values on every token but the rest at the masked positions only; the MLM head
    runs at the masked positions only. Embedding look-ups, norms, GELU are not counted.
    """
    model = scorer.model

    def matmul(*modules) -> int:
        return 2 * sum(x.weight.numel() for m in modules for x in m.modules() if isinstance(x, torch.nn.Linear))

    layers = list(model.base_model.encoder.layer)
    hidden = model.config.hidden_size
    head = matmul(getattr(model, "cls", None) or model.lm_head)
    full = layers[:-1] if scorer.bert_like else layers
    per_token = sum(matmul(layer) for layer in full)
    if scorer.bert_like:
        last = layers[-1]
        kv = matmul(last.attention.self.key, last.attention.self.value)
        at_masked = matmul(last.attention.self.query, last.attention.output, last.intermediate, last.output)
    ids, _, example_units = scorer.encode(texts, None)
    flops = 0.0
    for c in masked_copies(example_units, scorer.settings):
        length, masked = len(ids[c.example]), sum(len(g) for g in c.groups)
        flops += length * per_token + len(full) * 4 * length * length * hidden + masked * head
        if scorer.bert_like:
            flops += length * kv + masked * (at_masked + 4 * length * hidden)
    return flops


def matmul_peak(n: int = 1024, repeats: int = 30) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def timed(fn, *args) -> tuple[float, int]:
    t = time.perf_counter()
    copies = fn(*args)
    return time.perf_counter() - t, copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ASSETS / "raymem-mini"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--examples", type=int, default=48, help="tweets for the scorer")
    ap.add_argument("--slow-examples", type=int, default=8, help="tweets for the per-copy loops")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    spec = ModelSpec(Path(args.model).name, str(Path(args.model).resolve()))
    scorer = PrecogScorer(spec, PrecogSettings(ks=KS), num_threads=args.threads)
    # The baselines get the model as a user loads it (same weights, default attention).
    model, tokenizer = load_masked_lm(spec), scorer.tokenizer
    tokenizer.model_max_length = scorer.max_length
    fill_mask = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=max(KS), device="cpu")
    texts = tweets(args.examples)
    slow = texts[:args.slow_examples]
    methods = {"scorer": (run_scorer, scorer, texts), "pipeline": (run_pipeline, fill_mask, tokenizer, slow),
               "bs1_loop": (run_bs1, model, tokenizer, slow)}

    load_before = os.getloadavg()
    for fn, *fn_args in methods.values():  # warm-up
        fn(*fn_args[:-1], fn_args[-1][:2])
    rates = {name: [] for name in methods}
    copies = {}
    peaks = []
    loads = []
    for _ in range(args.repeats):
        peaks.append(matmul_peak())
        for name, (fn, *fn_args) in methods.items():
            seconds, copies[name] = timed(fn, *fn_args)
            rates[name].append(copies[name] / seconds)
        loads.append(os.getloadavg()[0])
    peaks.append(matmul_peak())
    load_after = os.getloadavg()

    # Other work on the cores (2 threads each on 2 cores) slows the per-copy loops far more
    # than the batched scorer, which would flatter the ratio: keep only repeats whose matmul
    # peak, measured just before and just after, stayed within 20% of the run's best.
    best = max(peaks)
    quiet = [i for i in range(args.repeats) if min(peaks[i], peaks[i + 1]) >= QUIET * best]
    kept = quiet if len(quiet) >= 3 else list(range(args.repeats))
    median = {name: statistics.median(r[i] for i in kept) for name, r in rates.items()}
    flops_per_pass = scorer_flops(scorer, texts)
    scorer_flop_s = flops_per_pass * median["scorer"] / copies["scorer"]
    peak = statistics.median(peaks[i] for i in sorted({j for i in kept for j in (i, i + 1)}))
    result = {
        "model": spec.source, "parameters": sum(p.numel() for p in model.parameters()),
        "threads": args.threads, "repeats": args.repeats, "quiet_repeats": quiet, "repeats_used": kept,
        "examples": {"scorer": len(texts), "pipeline": len(slow), "bs1_loop": len(slow)},
        "masked_copies": copies,
        "copies_per_second": {name: {"median": median[name], "all": rates[name]} for name in methods},
        "ratio_scorer_vs_pipeline": median["scorer"] / median["pipeline"],
        "ratio_scorer_vs_bs1_loop": median["scorer"] / median["bs1_loop"],
        "scorer_gflop_per_pass": flops_per_pass / 1e9,
        "scorer_gflop_s": scorer_flop_s / 1e9,
        "matmul_peak_gflop_s": peak / 1e9, "matmul_peak_all": [p / 1e9 for p in peaks],
        "scorer_fraction_of_peak": scorer_flop_s / peak,
        "ratio_per_repeat": {"vs_pipeline": [a / b for a, b in zip(rates["scorer"], rates["pipeline"])],
                             "vs_bs1_loop": [a / b for a, b in zip(rates["scorer"], rates["bs1_loop"])]},
        "load_average": {"before": load_before, "after": load_after, "per_repeat": loads},
        "scorer_path": "bert_masked_logits" if scorer.bert_like else "masked_position_logits",
        "attention": {"scorer": scorer.model.config._attn_implementation,
                      "baselines": model.config._attn_implementation},
        "settings": {"ks": KS, "unit": "subword", "masking": "single",
                     "copies_per_batch": scorer.settings.copies_per_batch, "max_length": scorer.max_length},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }

    print(f"model {spec.source}  threads {args.threads}  repeats {args.repeats} ({len(quiet)} quiet)  "
          f"load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    if kept is not quiet:
        print(f"WARNING: fewer than 3 quiet repeats; medians over all {args.repeats}, ratios unreliable")
    print(f"{'method':<10} {'examples':>8} {'copies':>7} {'copies/s':>10} {'x pipeline':>11}")
    for name in methods:
        print(f"{name:<10} {result['examples'][name]:>8} {copies[name]:>7} {median[name]:>10.1f} "
              f"{median[name] / median['pipeline']:>10.1f}x")
    print(f"scorer vs pipeline {result['ratio_scorer_vs_pipeline']:.1f}x, "
          f"vs bs-1 loop {result['ratio_scorer_vs_bs1_loop']:.1f}x")
    per_repeat = [f"{r:.1f}" if i in quiet else f"({r:.1f})"
                  for i, r in enumerate(result["ratio_per_repeat"]["vs_pipeline"])]
    print(f"per repeat (contended in brackets): scorer/pipeline {' '.join(per_repeat)}; "
          f"load {' '.join(f'{x:.1f}' for x in loads)}")
    print(f"scorer {scorer_flop_s / 1e9:.1f} GFLOP/s of a {peak / 1e9:.1f} GFLOP/s matmul peak "
          f"({100 * scorer_flop_s / peak:.0f}%)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
