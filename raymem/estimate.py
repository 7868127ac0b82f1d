"""`raymem plan`: what a study will run and what it will cost, before anything runs.

Offline: it reads the study file, the local data files of user tasks and the tweet corpus,
and local model folders, never the results store or the hub. Registry tasks carry their
split sizes and registry models their shapes here, so the published grids plan anywhere.
The trials are the planner's own (`raymem.study.plan_trials`), so their count is exact.

What the cost estimate assumes (printed with it):
- compute is dense matmul FLOPs: 2 x parameters per token forward, 4 x backward; a
  training epoch is 6 x P x tokens, plus 2 x P x tokens for the per-epoch predictions on the
  training set that fine-tuning trials make to find the memorised checkpoint (counted for
  every epoch: they stop once it is found, so this is an upper bound);
- tokens per example = min(max_length, the task's mean subword tokens); hub tasks' means
  are approximate (BERT's tokenizer), local tasks' are 1.3 x their mean word count;
- every fine-tuning trial runs all its epochs (a search: every candidate, both models, its
  largest epoch budget; ASHA and the memorised stop only make it cheaper);
- GPU-hours = FLOPs / (the GPU's dense bf16 peak x --efficiency, 0.3 by default: small
  batches of short sequences rarely reach more);
- storage: fp32 safetensors checkpoints (memorised and final per fine-tuning trial, final
  per control model), hidden states in fp32, about 40 bytes per stored result row.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from raymem.config import Study
from raymem.models import model_spec
from raymem.tasks import load_task, task_spec
from raymem.trial import Trial

GPU_PEAK_TFLOPS = {"T4": 65, "A10G": 70, "L4": 121, "A100": 312, "H100": 989, "H200": 989}  # dense bf16/fp16
BYTES_PER_ROW = 40


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    parameters: int


# Registry models raymem does not ship: their published configurations.
PUBLISHED_SHAPES = {
    "bert-base-cased": Shape(12, 768, 108_310_272),
    "opt-125m": Shape(12, 768, 125_239_296),
    "gpt-neo-125m": Shape(12, 768, 125_198_592),
    "pythia-160m": Shape(12, 768, 162_322_944),
    "minilm": Shape(6, 384, 22_713_216),  # when its package is not installed
}

# Hub tasks: (train, validation, test) after raymem/tasks.py's split mapping (Dankers &
# Titov's tasks: the whole training split, the evaluation split halved; QQP, QNLI and
# GLUE's SST-2: 90/10 of train, GLUE's validation as test), and approximate mean subword
# tokens per example, text pair included.
PUBLISHED_SIZES = {
    "cola": ((8551, 521, 522), 11), "sst2": ((60614, 6735, 872), 13), "mrpc": ((3668, 204, 204), 53),
    "qqp": ((327461, 36385, 40430), 30), "qnli": ((94269, 10474, 5463), 50), "rte": ((2490, 138, 139), 70),
    "wic": ((5428, 319, 319), 37), "boolq": ((9427, 1635, 1635), 145), "sst2_sentences": ((6920, 436, 436), 25),
    "sst5": ((8544, 550, 551), 25), "emotion": ((16000, 1000, 1000), 22), "trec": ((5452, 250, 250), 12),
    "reuters": ((5485, 1094, 1095), 180), "stormfront": ((8562, 1070, 1071), 25),
    "implicit_hate": ((5077, 635, 634), 25),
}
SPLITS = ("train", "validation", "test")


def model_shape(name: str) -> Shape:
    """Layers, hidden size and parameters: from a local folder's files, else published."""
    spec = model_spec(name)
    if not spec.is_local():
        return PUBLISHED_SHAPES[name]
    config = json.loads((Path(spec.source) / "config.json").read_text())
    layers = config.get("num_hidden_layers") or config.get("num_layers") or config["n_layer"]
    hidden = config.get("hidden_size") or config.get("n_embd")
    weights = Path(spec.source) / "model.safetensors"
    if not weights.is_file():
        return PUBLISHED_SHAPES.get(name, Shape(layers, hidden, 0))
    with weights.open("rb") as f:  # the header alone: tensor shapes, no weights read
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    parameters = sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return Shape(layers, hidden, parameters)


def task_sizes(task) -> tuple[dict[str, int], float, int]:
    """Examples per split, mean tokens per example and classes, without the hub."""
    spec = task_spec(task)
    if spec.source == "hub" and isinstance(task, str):  # a registry task; a user's hub task is loaded
        sizes, tokens = PUBLISHED_SIZES[spec.name]
        return dict(zip(SPLITS, sizes)), float(tokens), len(spec.label_names)
    _, splits = load_task(task)  # local files, the installed tweet corpus or the hub's cache
    words = pl.concat([s.select(pl.col("text").str.split(" ").list.len()) for s in splits.values()])
    return {k: v.height for k, v in splits.items()}, 1.3 * float(words["text"].mean()), len(spec.label_names)


def subsampled(study: Study, sizes: dict[str, int]) -> dict[str, int]:
    return {split: min(n, study.subsample.get(split, n)) for split, n in sizes.items()}


def trial_cost(trial: Trial, study: Study, tasks: dict, shapes: dict[str, Shape]) -> tuple[float, float]:
    """(FLOPs, bytes stored) of one trial."""
    p, stage = trial.params, trial.stage
    if stage in ("examples", "counterfactual-summary", "localise-summary"):
        return 0.0, 0.0
    sizes, tokens = tasks[p["task"]]
    shape = shapes[p["model"]]
    P, train, evaluation = shape.parameters, sizes.get("train", 0), sizes.get(study.eval_split, 0)
    T = min(tokens, study.finetune.max_length)
    epochs = (p.get("settings") or {}).get("epochs") or max(study.search.space.epochs)
    if stage == "precog":
        scored = sum(sizes.get(s, 0) for s in study.precog.splits)
        copies = T if study.precog.masking == "single" else study.precog.draws
        return 2 * P * T * copies * scored, scored * len(study.precog.k) * BYTES_PER_ROW
    if stage == "search":
        n = p["samples"] if p["algorithm"] == "random" else math.prod(len(v) for v in p["space"].values())
        return n * 2 * epochs * 8 * P * train * T, n * BYTES_PER_ROW
    if stage == "finetune":
        flops = epochs * 8 * P * train * T + 2 * 2 * P * evaluation * T
        return flops, 2 * 4 * P + 2 * (train + evaluation) * BYTES_PER_ROW
    if stage == "counterfactual":
        return epochs * 6 * P * train / 2 * T + 2 * P * train * T, train * BYTES_PER_ROW
    if stage == "control":
        _, aux_tokens = tasks[study.localise.control.auxiliary_task]
        # each step takes a batch of the task and one of the auxiliary task
        return epochs * 6 * P * train * (T + min(aux_tokens, study.finetune.max_length)), 4 * P
    if stage == "hidden":
        return 2 * P * train * T, (shape.layers + 1) * train * shape.hidden * 4
    if stage == "neurons":
        return neuron_cost(p, study, shape, train, T)
    return localise_flops(p, study, shape, train, T), shape.layers * BYTES_PER_ROW


def neuron_cost(p: dict, study: Study, shape: Shape, train: int, T: float) -> tuple[float, float]:
    """(FLOPs, bytes) of one neuron trial, units taken as 4x the hidden size; the mask
    techniques and planting at their most steps (they may stop early)."""
    forward, noisy = 2 * shape.parameters * T, study.noise_ratio * train
    scored = min(noisy, p.get("scored_examples") or noisy)  # the techniques' examples
    units = shape.layers * 4 * shape.hidden
    # Zero-Out: per unit of layer l, a forward of layers l..L (the ones below are replayed)
    zero_out = units * scored * forward * (shape.layers + 1) / (2 * shape.layers)
    per_technique = {"activations": 2 * scored * forward, "zero_out": zero_out,
                     "integrated_gradients": 3 * shape.layers * p["ig_steps"] * scored * forward,
                     "slimming": 3 * p["slim_epochs"] * p["mask_batch_size"] * forward,
                     "hard_concrete": 3 * p["hc_epochs"] * p["mask_batch_size"] * forward}
    flops = sum(per_technique[t] for t in p["techniques"])
    flops += 3 * p["plant_epochs"] * 2 * noisy * forward if "planted_layers" in p else 0
    flops += len(p["deletion_percents"]) * (len(p["techniques"]) + p["deletion_random_draws"]) * \
        (noisy + p["heldout"]) * forward
    return flops, units * len(p["techniques"]) * BYTES_PER_ROW


def localise_flops(p: dict, study: Study, shape: Shape, train: int, T: float) -> float:
    P, L = shape.parameters, shape.layers
    noisy = study.noise_ratio * train
    if p["technique"] == "retraining":
        # the windows start..L of one start layer; a window backpropagates through its own
        # layers only, and the layers below the start run once for the whole trial
        sizes = range(1, L - p["start"] + 2)
        share = sum(sizes) / L
        return (study.localise.retrain_epochs * (2 * len(sizes) + 4 * share) * P * (train - noisy) * T
                + 2 * P * train * T * len(sizes))
    if p["technique"] == "swapping":
        return L * (L + 1) / 2 * 2 * P * train * T  # every window swapped, the set predicted
    if p["technique"] == "gradients":
        return 6 * P * 2 * noisy * T + 2 * P * train * T  # per-example gradients; body outputs once
    return 0.0  # probing and centroids work on the hidden states


def estimate(study: Study, gpu: str = "A10G", efficiency: float = 0.3) -> dict:
    """The plan's trials per stage, examples per task, FLOPs, GPU-hours and storage."""
    from raymem.study import plan_trials

    control_on = study.localise.enabled and study.localise.control.enabled
    tasks_in = list(study.tasks) + ([study.localise.control.auxiliary_task] if control_on and
                                    study.localise.control.auxiliary_task not in study.task_names() else [])
    tasks, n_labels, examples = {}, {}, {}
    for task in tasks_in:
        sizes, tokens, labels = task_sizes(task if isinstance(task, str) else task.model_dump())
        name = task if isinstance(task, str) else task.name
        tasks[name] = (subsampled(study, sizes), tokens)
        n_labels[name], examples[name] = labels, {**tasks[name][0], "mean_tokens": round(tokens, 1)}
    shapes = {m: model_shape(m) for m in study.models}
    trials = plan_trials(study, study.results, n_labels, {m: s.layers for m, s in shapes.items()})
    peak = GPU_PEAK_TFLOPS[gpu] * 1e12 * efficiency
    stages: dict[str, dict] = {}
    for trial in trials:
        flops, stored = trial_cost(trial, study, tasks, shapes)
        row = stages.setdefault(trial.stage, {"trials": 0, "flops": 0.0, "storage_bytes": 0.0})
        row["trials"] += 1
        row["flops"] += flops
        row["storage_bytes"] += stored
    for row in stages.values():
        row["gpu_hours"] = row["flops"] / peak / 3600
    total = {k: sum(r[k] for r in stages.values()) for k in ("trials", "flops", "storage_bytes", "gpu_hours")}
    return {"study": study.study, "gpu": gpu, "efficiency": efficiency, "examples": examples,
            "models": {m: vars(s) for m, s in shapes.items()}, "stages": stages, "total": total,
            "assumes": __doc__.split("What the cost estimate assumes (printed with it):\n")[1].strip()}


def report(plan: dict) -> str:
    """The estimate as text: examples per task, then per stage trials, compute, storage."""
    lines = [f"study {plan['study']}: {plan['total']['trials']} trials", "", "examples per task (after subsample):"]
    for task, sizes in plan["examples"].items():
        lines.append(f"  {task}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    lines += ["", f"{'stage':<24}{'trials':>9}{'compute':>14}{'GPU-hours':>12}{'storage':>12}"]
    for stage, row in [*plan["stages"].items(), ("total", plan["total"])]:
        lines.append(f"{stage:<24}{row['trials']:>9}{_scaled(row['flops'], FLOP_UNITS):>14}"
                     f"{row['gpu_hours']:>12.2f}{_scaled(row['storage_bytes'], BYTE_UNITS):>12}")
    lines += ["", f"GPU-hours on {plan['gpu']} at {plan['efficiency']:.0%} of its dense bf16 peak. Assumes:",
              *("  " + line for line in plan["assumes"].splitlines())]
    return "\n".join(lines)


FLOP_UNITS = ("FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP")
BYTE_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def _scaled(n: float, units: tuple[str, ...]) -> str:
    """1234567 -> '1.2 M<unit>': the largest unit that keeps the number at 1 or more."""
    for unit in units:
        if n < 1000 or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == units[0] else f"{n:.1f} {unit}"
        n /= 1000
    return ""

