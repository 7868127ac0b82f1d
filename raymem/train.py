"""The one fine-tuning loop every stage uses, and batched prediction.

AdamW, linear schedule with warm-up, gradient clipping, optional frozen embeddings;
texts are tokenised once and each batch is padded only to its own longest example.
Both follow the device of the model they are given. Given a `Runtime`, fine_tune runs its
forwards in the runtime's precision (autocast; fp16 with loss scaling) and resumes from the
trial's last progress checkpoint (raymem/runtime.py); without one, both run under whatever
autocast context the caller opened, and fine_tune training under fp16 needs the caller's
loss scaler (`grad_scaler`, e.g. `runtime.grad_scaler()`). Losses and softmax are computed
in fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from raymem.models import embedding_parameters, model_inputs
from raymem.runtime import Runtime, TrainingState, model_device, seed_everything, to_device


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 50
    lr: float = 1e-5
    batch_size: int = 8
    max_length: int = 512
    warmup: float = 0.1
    clip: float = 1.0
    weight_decay: float = 0.01  # torch's AdamW default, as the original code
    freeze_embeddings: bool = True
    # "length_sorted" (a speed setting: sorted by length within pools of 50 batches, little
    # padding) or "shuffled" (uniform batches, the original's DataLoader); the studied models'
    # training takes `finetune.batch_order` (shuffled by default), the techniques' own
    # training (retraining windows, head-only control) keeps this default
    batch_order: str = "length_sorted"


BATCH_ORDERS = ("shuffled", "length_sorted")


class Encoded:
    """A split tokenised once: token ids per example plus labels."""

    def __init__(self, tokenizer, texts: list[str], pairs: list[str | None] | None,
                 labels: np.ndarray, max_length: int):
        max_length = min(max_length, tokenizer.model_max_length)  # the model's position limit
        enc = tokenizer(*model_inputs(tokenizer, texts, pairs), truncation=True, max_length=max_length)
        self.tokenizer = tokenizer
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
        self.labels = torch.tensor(np.array(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, index) -> dict[str, torch.Tensor]:
        features = [self.features[i] for i in index]
        inputs = dict(self.tokenizer.pad(features, return_tensors="pt"))
        if len({len(f["input_ids"]) for f in features}) == 1:
            # One length, known here on the host: nothing is padded, so no mask. With a mask,
            # transformers reads its values on every forward to see whether it can skip it
            # (a device sync per batch); with none it does not, and computes the same.
            del inputs["attention_mask"]
        inputs["labels"] = self.labels[index]
        return inputs

    def subset(self, index) -> "Encoded":
        """The examples `index`, without tokenising again."""
        out = object.__new__(Encoded)
        out.tokenizer, out.features = self.tokenizer, [self.features[i] for i in index]
        out.labels = self.labels[torch.as_tensor(np.asarray(index), dtype=torch.long)]
        return out

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(f["input_ids"]) for f in self.features), int, len(self.features))

    def batches(self, batch_size: int, generator: torch.Generator | None = None, order: str = "length_sorted"):
        """In stored order; or, with a generator, in training order: `shuffled`, uniformly
        shuffled batches; `length_sorted`, shuffled, sorted by length within pools of 50 batches
        (so a batch pads little), then the batches shuffled."""
        if order not in BATCH_ORDERS:
            raise ValueError(f"batch order must be one of {BATCH_ORDERS}, not {order!r}")
        if generator is None or order == "shuffled":
            index = list(range(len(self))) if generator is None else \
                torch.randperm(len(self), generator=generator).tolist()
            for start in range(0, len(index), batch_size):
                yield self.batch(index[start:start + batch_size])
            return
        order, lengths, pool = torch.randperm(len(self), generator=generator).numpy(), self.lengths(), 50 * batch_size
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield self.batch(batches[b])


def encode_split(tokenizer, split: pl.DataFrame, labels: np.ndarray, max_length: int) -> Encoded:
    return Encoded(tokenizer, split["text"].to_list(), split["text_pair"].to_list(), labels, max_length)


def train_split(store, examples_trial: str) -> pl.DataFrame:
    """The training examples of an `examples` trial, in example-id order."""
    examples = store.read_shard("examples", "examples", examples_trial)
    return examples.filter(pl.col("split") == "train").sort("example_id")


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as the fused kernel, on a GPU and on the CPU (one kernel per step, not a dozen
    ops per parameter: 2.5x-2.8x less optimiser time for raymem-mini on a core,
    benchmarks/fused_adamw.py); torch's default elsewhere."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def make_optimiser(params, s: TrainSettings, steps: int):
    """AdamW (`adamw`) with a linear schedule: warm-up over `s.warmup` of the steps, then
    decay to 0."""
    optimiser = adamw(params, s.lr, s.weight_decay)
    warmup = int(s.warmup * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: (i + 1) / warmup if i < warmup else max(0.0, (steps - i) / max(1, steps - warmup)))
    return optimiser, schedule


def fine_tune(model, data: Encoded, s: TrainSettings, seed: int,
              after_epoch: Callable[[int], bool] | None = None, runtime: Runtime | None = None,
              extra: dict | None = None, grad_scaler: torch.amp.GradScaler | None = None) -> list[float]:
    """Train in place; `after_epoch(epoch)` may return True to stop early. Returns losses.

    With a `runtime`, a progress checkpoint is kept after every epoch (model, optimiser,
    schedule, random states, data order and `extra`, the caller's own state, updated in
    place on resume), so a restarted trial goes on from the epoch after the last one kept.
    Without one, `grad_scaler` scales the losses (required under the caller's fp16 autocast).
    """
    generator = runtime.seed(seed) if runtime else seed_everything(seed)
    if s.freeze_embeddings:
        for p in embedding_parameters(model):
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser, schedule = make_optimiser(params, s, s.epochs * -(-len(data) // s.batch_size))
    device = model_device(model)
    scaler = runtime.grad_scaler() if runtime else grad_scaler or torch.amp.GradScaler(device.type, enabled=False)
    if not scaler.is_enabled() and fp16_autocast(device):
        raise ValueError("fine_tune under fp16 autocast needs a loss scaler: pass grad_scaler "
                         "(runtime.grad_scaler()); unscaled fp16 gradients underflow to zero")
    precision = runtime.autocast if runtime else contextlib.nullcontext
    state = TrainingState({"model": model, "optimiser": optimiser, "schedule": schedule,
                           "scaler": scaler}, generator, extra if extra is not None else {})
    first = runtime.resume(state) if runtime else 1
    if "stopped_at" in state.extra:  # resumed after `after_epoch` stopped it: nothing left to train
        first = s.epochs + 1
    for epoch in range(first, s.epochs + 1):
        model.train()
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for batch in data.batches(s.batch_size, generator, s.batch_order):
            batch = to_device(batch, device)
            labels = batch.pop("labels")
            with precision():
                logits = model(**batch).logits
            loss = F.cross_entropy(logits.float(), labels)
            scaler.scale(loss).backward()
            scaler.unscale_(optimiser)
            torch.nn.utils.clip_grad_norm_(params, s.clip)
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            total += loss.detach() * len(labels)
        state.losses.append(float(total) / len(data))
        stop = after_epoch is not None and after_epoch(epoch)
        if stop:
            state.extra["stopped_at"] = epoch
        if runtime:
            runtime.save_progress(state, epoch)
        if stop:
            break
    model.eval()
    return state.losses


def fp16_autocast(device: torch.device) -> bool:
    """Whether the caller's autocast runs forwards on `device` in fp16."""
    return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.float16


@torch.inference_mode()
def predict(model, data: Encoded, batch_size: int = 64) -> np.ndarray:
    """Class probabilities, shape (examples, classes), in the order of `data`."""
    model.eval()
    device = model_device(model)
    order = np.argsort(data.lengths(), kind="stable")  # similar lengths share a batch
    probs = None
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = data.batch(index.tolist())
        batch.pop("labels")
        p = torch.softmax(model(**to_device(batch, device)).logits.float(), -1).cpu().numpy()
        probs = np.empty((len(data), p.shape[1]), dtype=p.dtype) if probs is None else probs
        probs[index] = p
    return probs


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0
