"""Layer retraining (Dankers & Titov, 2024): which layers must be relearnt to forget the noisy labels.

For every window [a, b] of the body layers 1..L, the memorised model's layers a..b are
reset to their pre-trained weights and retrained on clean examples only, every other
layer frozen. As the original (src/layer_retraining.py, `find_freeze`): the classifier
and a decoder's final norm stay trainable, BERT's pooler is frozen, and the learning
rate warms up over the first 10% of the steps. A held-out set of clean training examples,
as large as the noisy set and never trained on, gives the clean accuracy after retraining
(`clean_acc`): a window whose retraining broke the task shows there. The accuracy on the
noisy examples against their noisy labels afterwards,
normalised by the accuracy after retraining all layers, `(acc - acc_all) / (1 - acc_all)`,
says how much memorisation lives outside the window; the window error is 1 minus that
(NaN when acc_all is 1, as nothing was forgotten to compare with).

Reuse of frozen outputs: the layers below a window are frozen and equal to the memorised
model's, so what they hand to layer a is the same for every step of every window starting
at a. It is computed once per start, climbing one layer at a time (the output of layer a-1
fed with the cached input of layer a-1), and replayed: while a window trains, the layers
below it are swapped for a module that returns the cached hidden states of the batch's
examples. The model's own forward still runs, so attention masks, position ids and rotary
embeddings reach the window exactly as in the full forward, whatever the architecture.
`reuse=False` is the plain full forward; both give the same training.

Dropout: the window, the layers above it and the head train with dropout as in
fine-tuning; the embeddings and the frozen layers below run in eval mode, in both paths.
That makes a frozen layer's output a fixed function of its input (hence cacheable), and
the two paths draw the same random numbers.

Precision: the callers' autocast; training under fp16 needs `grad_scaler`, a factory of
loss scalers (`runtime.grad_scaler`), one fresh scaler per window so no window inherits
another's scale.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import polars as pl
import torch

from raymem.localise.layers import body_layers, layers_replaced, num_layers
from raymem.localise.swapping import layer_scores_from_windows
from raymem.localise.swapping import windows as all_windows
from raymem.localise.technique import STAGE, PairInputs, Technique, layer_rows, with_keys
from raymem.models import attention_mask
from raymem.runtime import Runtime, model_device, to_device
from raymem.settings import deferred_settings, resolve_settings
from raymem.train import Encoded, TrainSettings, fine_tune, predict
from raymem.trial import Tables, Trial

ScalerFactory = Callable[[], torch.amp.GradScaler]
RETRAIN_SETTINGS = TrainSettings(epochs=5, lr=3e-5, batch_size=8, warmup=0.1)
WINDOW_SCHEMA = {"window_start": pl.Int64, "window_end": pl.Int64, "noisy_acc": pl.Float64,
                 "normalised_acc": pl.Float64, "error": pl.Float64}

# modules that run after the last body layer, below model.base_model (or its .decoder)
_AFTER_BODY = ("pooler", "final_layer_norm", "ln_f", "norm", "project_out")


def head_modules(model, pooler: bool = True) -> list[torch.nn.Module]:
    """The modules after the last body layer: classifier, BERT's pooler (unless `pooler` is
    False: retraining keeps it frozen, as the original), a decoder's final norm."""
    base = model.base_model
    modules = [m for m in model.children() if m is not base]
    for owner in (base, getattr(base, "decoder", None)):
        for name in _AFTER_BODY if pooler else [n for n in _AFTER_BODY if n != "pooler"]:
            module = getattr(owner, name, None)
            if isinstance(module, torch.nn.Module):
                modules.append(module)
    return modules


def retraining_windows(memorised, pretrained, clean_data: Encoded, noisy_data: Encoded,
                       settings: TrainSettings = RETRAIN_SETTINGS, seed: int = 0, reuse: bool = True,
                       windows: list[tuple[int, int]] | None = None, batch_size: int = 64,
                       grad_scaler: ScalerFactory | None = None) -> pl.DataFrame:
    """Retrain every window (or the given ones, plus all layers) and score it.

    `clean_data` holds the clean training examples with their labels, `noisy_data` the
    noisy examples with their noisy labels; `pretrained` is any model with the same body
    layers (e.g. the checkpoint fine-tuning started from). Inputs are left untouched.
    Returns window_start, window_end, noisy_acc, normalised_acc, error per window.
    """
    n_layers = num_layers(memorised)
    wanted = sorted(set(windows or all_windows(n_layers)) | {(1, n_layers)})  # (1, L) normalises
    accuracy = {window: acc for window, acc, _ in window_accuracies(
        memorised, pretrained, clean_data, noisy_data, wanted, settings, seed, reuse, batch_size,
        grad_scaler=grad_scaler)}
    return window_errors(accuracy, n_layers)


def window_accuracies(memorised, pretrained, clean_data: Encoded, noisy_data: Encoded,
                      windows: list[tuple[int, int]], settings: TrainSettings = RETRAIN_SETTINGS,
                      seed: int = 0, reuse: bool = True, batch_size: int = 64, held_out: Encoded | None = None,
                      grad_scaler: ScalerFactory | None = None):
    """Yield ((start, end), noisy accuracy, held-out clean accuracy or None) per window
    retrained, in (start, end) order.

    Every window trains from the memorised model with the same seed, so a window's result
    does not depend on which others were retrained before it in the same call.
    """
    n_layers = num_layers(memorised)
    if num_layers(pretrained) != n_layers:
        raise ValueError(f"memorised model has {n_layers} layers, the pre-trained one {num_layers(pretrained)}")
    if len(clean_data) == 0 or len(noisy_data) == 0:
        raise ValueError("layer retraining needs clean examples to train on and noisy ones to score")
    for start, end in windows:
        _check_window(start, end, n_layers)
    working = _working_copy(memorised)
    datasets = [clean_data, noisy_data, *([held_out] if held_out is not None and len(held_out) else [])]
    inputs = None  # cached inputs of the current start layer; None while starting at layer 1
    for start, end in sorted(windows):  # by start: each start's cache is built from the previous one
        while reuse and (inputs.layer if inputs else 1) < start:
            inputs = _next_layer_inputs(working, inputs, datasets, batch_size)
        _retrain(working, pretrained, start, end, inputs, datasets, settings, seed, grad_scaler)
        with _below_replayed(working, inputs, datasets) as (_, noisy, *held):
            accuracy = _accuracy(working, noisy, batch_size)
            clean_accuracy = _accuracy(working, held[0], batch_size) if held else None
        _restore(working, memorised, start, end)
        yield (start, end), accuracy, clean_accuracy


def window_errors(noisy_acc: dict[tuple[int, int], float], n_layers: int) -> pl.DataFrame:
    """Normalise each window's noisy accuracy by that of window (1, n_layers), all layers
    retrained; error = 1 - normalised (NaN throughout if retraining all layers kept acc 1)."""
    acc_all = noisy_acc[1, n_layers]
    rows = []
    for (start, end), acc in sorted(noisy_acc.items()):
        normalised = (acc - acc_all) / (1 - acc_all) if acc_all < 1 else float("nan")
        rows.append((start, end, acc, normalised, 1 - normalised))
    return pl.DataFrame(rows, schema=WINDOW_SCHEMA, orient="row")


def retrain_window(memorised, pretrained, start: int, end: int, clean_data: Encoded,
                   settings: TrainSettings = RETRAIN_SETTINGS, seed: int = 0, reuse: bool = True,
                   batch_size: int = 64, grad_scaler: ScalerFactory | None = None):
    """A new model: `memorised` with layers start..end reset to `pretrained` and retrained."""
    _check_window(start, end, num_layers(memorised))
    working = _working_copy(memorised)
    inputs = None
    while reuse and (inputs.layer if inputs else 1) < start:
        inputs = _next_layer_inputs(working, inputs, [clean_data], batch_size)
    _retrain(working, pretrained, start, end, inputs, [clean_data], settings, seed, grad_scaler)
    # hand it back configured like the model it came from
    working.config.use_cache = memorised.config.use_cache
    for param, original in zip(working.parameters(), memorised.parameters(), strict=True):
        param.requires_grad_(original.requires_grad)
    return working


def train_head(model, data: Encoded, settings: TrainSettings, seed: int = 0, batch_size: int = 64,
               grad_scaler: ScalerFactory | None = None):
    """Train only the head of `model` in place, the whole body frozen (e.g. the control model
    of forgetting gradients). The body runs in eval mode, so its outputs are computed once
    and replayed: each epoch costs a head's forward and backward, not the whole model's."""
    inputs = None
    while (inputs.layer if inputs else 1) <= num_layers(model):
        inputs = _next_layer_inputs(model, inputs, [data], batch_size)
    model.requires_grad_(False)
    for module in head_modules(model):
        module.requires_grad_(True)
    with _below_replayed(model, inputs, [data]) as (train,):
        fine_tune(_TrainFrom(model, num_layers(model) + 1), train,
                  replace(settings, freeze_embeddings=False), seed, grad_scaler=_fresh(grad_scaler))
    return model


def _fresh(grad_scaler: ScalerFactory | None) -> torch.amp.GradScaler | None:
    return grad_scaler() if grad_scaler is not None else None


def _check_window(start: int, end: int, n_layers: int) -> None:
    if not 1 <= start <= end <= n_layers:
        raise ValueError(f"window ({start}, {end}) is not within layers 1..{n_layers}")


def _working_copy(model):
    working = copy.deepcopy(model)
    working.config.use_cache = False  # no key/value cache to build while training
    return working.eval()


def _retrain(working, pretrained, start: int, end: int, inputs: _LayerInputs | None,
             datasets: list[Encoded], settings: TrainSettings, seed: int,
             grad_scaler: ScalerFactory | None = None) -> None:
    """Reset layers start..end to `pretrained`, freeze all but them and the head, train on datasets[0]."""
    copy_from = body_layers(pretrained)
    layers = body_layers(working)
    for i in range(start - 1, end):
        layers[i].load_state_dict(copy_from[i].state_dict())
    working.requires_grad_(False)
    for module in [*layers[start - 1:end], *head_modules(working, pooler=False)]:
        module.requires_grad_(True)
    with _below_replayed(working, inputs, datasets) as (train, *_):
        # embeddings are frozen above already; fine_tune's own freezing needs the bare model
        fine_tune(_TrainFrom(working, start), train, replace(settings, freeze_embeddings=False), seed,
                  grad_scaler=_fresh(grad_scaler))


def _restore(working, memorised, start: int, end: int) -> None:
    """Undo a window's training: its layers and the head back to the memorised model."""
    layers, memorised_layers = body_layers(working), body_layers(memorised)
    for i in range(start - 1, end):
        layers[i].load_state_dict(memorised_layers[i].state_dict())
    for module, original in zip(head_modules(working), head_modules(memorised), strict=True):
        module.load_state_dict(original.state_dict())


def _accuracy(model, data: Encoded, batch_size: int) -> float:
    return float((predict(model, data, batch_size).argmax(-1) == data.labels.numpy()).mean())


class _TrainFrom(torch.nn.Module):
    """`model` for fine_tune: in train mode only layers `start`.. and the head use dropout."""

    def __init__(self, model, start: int):
        super().__init__()
        self.model, self.start = model, start

    def train(self, mode: bool = True):
        self.training = mode
        self.model.eval()
        if mode:
            for module in [*body_layers(self.model)[self.start - 1:], *head_modules(self.model)]:
                module.train()
        return self

    def forward(self, **batch):
        return self.model(**batch)


@dataclass
class _LayerInputs:
    """What enters body layer `layer` (1-based) for each example of each dataset.

    Real tokens only, (tokens, hidden) per example, so any batch padding can be rebuilt;
    `tuple_length` is how the layers return it (0: a bare tensor, else a tuple's length).
    """

    layer: int
    rows: list[list[torch.Tensor]]
    tuple_length: int


class _Replay(torch.nn.Module):
    """Stands in for each frozen layer below the window: returns the current batch's cached
    input of the window. Every stand-in returns the same, so the last one feeds the window."""

    def __init__(self, tuple_length: int):
        super().__init__()
        self.tuple_length = tuple_length
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        if self.hidden is None or self.hidden.shape != hidden_states.shape:
            raise RuntimeError("replayed layer inputs do not match the batch: feed batches "
                               "from the replayed data only")
        if self.tuple_length == 0:
            return self.hidden
        return (self.hidden,) + (None,) * (self.tuple_length - 1)


class _ReplayedData(Encoded):
    """`data` whose batches also hand their examples' cached layer inputs to `replay`."""

    def __init__(self, data: Encoded, rows: list[torch.Tensor], replay: _Replay):
        self.tokenizer, self.features, self.labels = data.tokenizer, data.features, data.labels
        self.rows, self.replay = rows, replay

    def batch(self, index) -> dict[str, torch.Tensor]:
        inputs = super().batch(index)
        real = attention_mask(inputs).bool().to(self.rows[0].device)
        hidden = self.rows[0].new_zeros(*real.shape, self.rows[0].shape[-1])
        hidden[real] = torch.cat([self.rows[i] for i in index])  # padding stays zero: it is masked
        self.replay.hidden = hidden
        return inputs


@contextmanager
def _below_replayed(model, inputs: _LayerInputs | None, datasets: list[Encoded]):
    """Yield `datasets` ready to run on `model`. With cached `inputs`, the layers below
    `inputs.layer` are replaced by a replay of the cache inside the block (then put back)."""
    if inputs is None:
        yield datasets
        return
    replay = _Replay(inputs.tuple_length)
    with layers_replaced(model, inputs.layer - 1, replay):
        yield [_ReplayedData(data, rows, replay) for data, rows in zip(datasets, inputs.rows, strict=True)]


class _StopForward(Exception):
    """Raised once the wanted layer has run: nothing above it is needed."""


@torch.no_grad()  # not inference_mode: the cached tensors later enter autograd graphs
def _next_layer_inputs(model, inputs: _LayerInputs | None, datasets: list[Encoded],
                       batch_size: int) -> _LayerInputs:
    """The inputs of the next layer up: run layer `inputs.layer` (1 if None) on its cached inputs."""
    layer = inputs.layer if inputs else 1
    captured = {}

    def keep_output(module, args, output):
        captured["output"] = output
        raise _StopForward

    model.eval()
    device = model_device(model)
    handle = body_layers(model)[layer - 1].register_forward_hook(keep_output)
    rows = []
    try:
        with _below_replayed(model, inputs, datasets) as fed:
            for data in fed:
                rows.append([])
                for batch in data.batches(batch_size):
                    batch = to_device(batch, device)
                    batch.pop("labels")
                    try:
                        model(**batch)
                    except _StopForward:
                        pass
                    output = captured.pop("output")
                    hidden = output if torch.is_tensor(output) else output[0]
                    real = attention_mask(batch).bool()
                    rows[-1].extend(h[r] for h, r in zip(hidden, real))
    finally:
        handle.remove()
    return _LayerInputs(layer + 1, rows, 0 if torch.is_tensor(output) else len(output))


def clean_split(noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean examples to retrain on, held-out clean set as large as the noisy set)."""
    clean = np.flatnonzero(~noisy)
    held_out = np.random.default_rng(seed).choice(clean, size=min(noisy.sum(), len(clean) // 2),
                                                  replace=False)
    return np.setdiff1d(clean, held_out), np.sort(held_out)


class Retraining(Technique):
    """One trial per start layer: its windows share the loaded checkpoints and the frozen
    layers' outputs below the start. Each finished window is kept in the store, so a
    restarted trial retrains only the rest. The pair's summary normalises the windows'
    noisy accuracies into window errors and layer scores."""
    name = "retraining"
    uses = frozenset({"pair", "pretrained"})

    def settings(self, cfg) -> dict:
        return {"epochs": cfg.retrain_epochs, "lr": cfg.retrain_lr, "batch_size": cfg.retrain_batch_size,
                "warmup": 0.1, "freeze_embeddings": True}

    def trials(self, base: dict, n_layers: int, cfg) -> list[dict]:
        retrain = {**self.settings(cfg), "max_length": base["max_length"]}
        if base.get("search_trial"):  # the searched learning rate and batch size; the windows' own epochs
            retrain = deferred_settings(retrain, base["search_trial"], keep=("epochs",))
        return [{**base, "technique": self.name, "retrain": retrain, "start": start, "n_layers": n_layers}
                for start in range(1, n_layers + 1)]

    def run(self, p: dict, pair: PairInputs, runtime: Runtime) -> Tables:
        clean_train, held_out = clean_split(pair.noisy, p["seed"])
        start, n_layers = p["start"], p["n_layers"]
        kept = runtime.kept_parts()
        scores = {(start, end): kept[f"{start}-{end}"] for end in range(start, n_layers + 1)
                  if f"{start}-{end}" in kept}
        todo = [(start, end) for end in range(start, n_layers + 1) if (start, end) not in scores]
        if todo:
            settings = TrainSettings(**resolve_settings(p["retrain"], runtime.store))
            with runtime.autocast():
                for window, noisy_acc, clean_acc in window_accuracies(
                        pair.memorised, pair.pretrained(), pair.data.subset(clean_train),
                        pair.data.subset(np.flatnonzero(pair.noisy)), todo, settings, seed=p["seed"],
                        held_out=pair.data.subset(held_out), grad_scaler=runtime.grad_scaler):
                    scores[window] = {"noisy_acc": noisy_acc, "clean_acc": clean_acc}
                    runtime.keep_part(f"{window[0]}-{window[1]}", scores[window])
                    runtime.report(windows_done=len(scores))
        runtime.finish_training()
        windows = sorted(scores)
        return {"retrain_windows": with_keys(p, pl.DataFrame(
            {"window_start": [w[0] for w in windows], "window_end": [w[1] for w in windows],
             "noisy_acc": [scores[w]["noisy_acc"] for w in windows],
             "clean_acc": [scores[w]["clean_acc"] for w in windows]},
            schema_overrides={"clean_acc": pl.Float64}), self.name)}

    def reduce(self, store, trials: list[Trial], keys: dict) -> tuple[np.ndarray, Tables]:
        rows = pl.concat([store.read_shard("retrain_windows", STAGE, t.trial_id) for t in trials])
        n_layers = int(rows["window_end"].max())
        accuracy = {(r["window_start"], r["window_end"]): r["noisy_acc"] for r in rows.iter_rows(named=True)}
        windows = window_errors(accuracy, n_layers).join(
            rows.select("window_start", "window_end", "clean_acc"), on=["window_start", "window_end"])
        scores = np.nan_to_num(layer_scores_from_windows(windows, n_layers))
        return scores, {"window_scores": with_keys(keys, windows, self.name),
                        "layer_scores": layer_rows(keys, self.name, scores)}
