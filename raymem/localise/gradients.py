"""Forgetting gradients (Dankers & Titov, 2024): which layers' parameters separate noisy from clean.

Per example, the gradient of the *negative* training loss on its training label (the
noisy label for noisy examples), with a proper log-softmax cross-entropy by default
(`localise.gradient_loss: log_softmax`). The original (src/gradient_analysis.py,
`-NLLLoss()(outputs.logits, labels)`) applied NLL to the raw logits, so its "loss" is the
label's logit alone: `raw_logit_nll` reproduces that, for the published numbers. The gradients are averaged over the noisy set and over an
equally sized clean set; per layer l = 1..L

    g_l = sum over the layer's parameters of |mean_noisy - mean_clean|   (an L1 norm)

and the layer score is g_l(memorised model) / g_l(control model), normalised to sum to 1.
The control model is the same architecture whose body was frozen (only the head trained).

Three ways to get the mean gradient of a set, all equal up to float rounding:

- `per_example`: batched per-example gradients from one forward and one backward of the
  batch. Forward hooks keep each layer module's input; the backward asks only for the
  gradients of the modules' outputs (no weight gradients), and each example's weight
  gradient is then an einsum of its own inputs and output gradients (the standard
  per-sample gradient of a linear map, as in Opacus). Linear, Conv1D and LayerNorm cover
  the layers of every registry model; any other parameter is an error. This is the
  per-example form other analyses need.
- `mean`: the gradient of the batch's summed loss, one backward per batch. Exact for the
  mean, because in eval mode examples do not interact (no dropout, no batch statistics,
  padding masked) and the gradient is linear; the cheapest route when only g_l is wanted.
- `loop`: one unpadded example at a time with plain autograd; the reference.

Dropout must be off, so every path runs the model in eval mode.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D

from raymem.localise.layers import body_layers
from raymem.localise.technique import PairInputs, Technique, layer_rows
from raymem.models import attention_mask
from raymem.runtime import Runtime, model_device, to_device
from raymem.settings import resolve_settings
from raymem.train import Encoded, TrainSettings
from raymem.trial import Tables

METHODS = ("mean", "per_example", "loop")
LOSSES = ("log_softmax", "raw_logit_nll")


def negative_training_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "log_softmax") -> torch.Tensor:
    """Per-example negative training loss: the label's log-probability (`log_softmax`), or, as
    the original's NLL on raw logits, the label's logit itself (`raw_logit_nll`)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    if logits.dtype in (torch.float16, torch.bfloat16):  # a softmax wants at least float32
        logits = logits.float()
    scores = torch.log_softmax(logits, dim=-1) if loss == "log_softmax" else logits
    return scores.gather(-1, labels[..., None]).squeeze(-1)


def layer_parameter_names(model) -> list[list[str]]:
    """For each layer 1..L, the names (as in `model.named_parameters()`) of its parameters."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [[name_of[id(p)] for p in layer.parameters()] for layer in body_layers(model)]


@contextmanager
def _analysis_mode(model):
    """Eval mode (no dropout), restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _as_leaves(model, names: list[str]):
    """Fresh leaf copies of the parameters `names` (to differentiate) and detached
    everything else (parameters and buffers), for functional_call."""
    wanted = set(names)
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if n in wanted}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in wanted}
    fixed.update({n: b for n, b in model.named_buffers()})
    return leaves, fixed


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _summed_loss(model, batch: dict[str, torch.Tensor], names: list[str], loss: str = "log_softmax"):
    """The batch's summed negative training loss in eval mode, and the parameter leaves
    `names` it was computed with."""
    with _analysis_mode(model):
        leaves, fixed = _as_leaves(model, names)
        logits = functional_call(model, (leaves, fixed), (), _inputs(batch)).logits
        return negative_training_loss(logits, batch["labels"], loss).sum(), leaves


# Modules whose per-example parameter gradients follow from their input and output gradient.
PER_EXAMPLE_MODULES = (torch.nn.Linear, Conv1D, torch.nn.LayerNorm)


def _owning_modules(model, names: list[str]) -> dict:
    """module -> {"weight" or "bias": parameter name} for the parameters `names`."""
    wanted, owners = set(names), {}
    for module_name, module in model.named_modules():
        for role, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{role}" if module_name else role
            if name not in wanted:
                continue
            if not isinstance(module, PER_EXAMPLE_MODULES):
                raise ValueError(f"per-example gradients: {name} belongs to a {type(module).__name__}; "
                                 f"supported: {', '.join(m.__name__ for m in PER_EXAMPLE_MODULES)}")
            owners.setdefault(module, {})[role] = name
    return owners


def _weight_gradients(module, inputs: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Per example (batch, tokens, features) -> (batch, *weight shape): sum over tokens."""
    if isinstance(module, torch.nn.Linear):  # y = x W^T + b
        return torch.einsum("bto,bti->boi", grad_out, inputs)
    if isinstance(module, Conv1D):  # y = x W + b
        return torch.einsum("bti,bto->bio", inputs, grad_out)
    normalised = F.layer_norm(inputs, module.normalized_shape, eps=module.eps)  # y = x^ w + b
    return (grad_out * normalised).sum(1)


def per_example_gradients(model, batch: dict[str, torch.Tensor],
                          names: list[str] | None = None, loss: str = "log_softmax") -> dict[str, torch.Tensor]:
    """Gradients of each example's negative training loss: name -> (batch, *parameter shape).

    `names` defaults to every layer parameter (layers 1..L). In eval mode an example's
    loss depends only on its own activations, so the gradient of the summed loss with
    respect to a module's output holds each example's own output gradient.
    """
    names = names or [n for layer in layer_parameter_names(model) for n in layer]
    owners = _owning_modules(model, names)
    seen = {}  # module -> (its input, its output) in this forward

    def remember(module, args, output):
        seen[module] = (args[0].detach(), output)

    handles = [module.register_forward_hook(remember) for module in owners]
    try:
        summed, _ = _summed_loss(model, batch, names, loss)
    finally:
        for handle in handles:
            handle.remove()
    modules = list(owners)
    grad_outs = torch.autograd.grad(summed, [seen[m][1] for m in modules], allow_unused=True)
    n = len(batch["labels"])
    grads = {}
    for module, grad_out in zip(modules, grad_outs):
        inputs, output = seen[module]
        grad_out = torch.zeros_like(output) if grad_out is None else grad_out
        grad_out, inputs = grad_out.reshape(n, -1, grad_out.shape[-1]), inputs.reshape(n, -1, inputs.shape[-1])
        roles = owners[module]
        if "weight" in roles:
            grads[roles["weight"]] = _weight_gradients(module, inputs, grad_out)
        if "bias" in roles:
            grads[roles["bias"]] = grad_out.sum(1)
    return {name: grads[name] for name in names}


def per_example_gradients_loop(model, batch: dict[str, torch.Tensor],
                               names: list[str] | None = None, loss: str = "log_softmax") -> dict[str, torch.Tensor]:
    """Reference for `per_example_gradients`: one unpadded example at a time, plain autograd."""
    names = names or [n for layer in layer_parameter_names(model) for n in layer]
    inputs, labels = _inputs(batch), batch["labels"]
    grads = {n: [] for n in names}
    with _analysis_mode(model):
        leaves, fixed = _as_leaves(model, names)
        for i in range(len(labels)):
            real = int(attention_mask(inputs)[i].sum())  # right padding: drop the pad tail
            one = {k: v[i:i + 1, :real] for k, v in inputs.items()}
            logits = functional_call(model, (leaves, fixed), (), one).logits
            one_loss = negative_training_loss(logits, labels[i:i + 1], loss).sum()
            for n, g in zip(names, torch.autograd.grad(one_loss, [leaves[n] for n in names])):
                grads[n].append(g)
    return {n: torch.stack(g) for n, g in grads.items()}


def _summed_gradient(model, batch: dict[str, torch.Tensor], names: list[str],
                     loss: str = "log_softmax") -> dict[str, torch.Tensor]:
    """Sum over the batch of per-example gradients, as one backward of the summed loss."""
    summed, leaves = _summed_loss(model, batch, names, loss)
    return dict(zip(names, torch.autograd.grad(summed, [leaves[n] for n in names])))


def length_sorted_batches(data: Encoded, index, batch_size: int):
    """Batches of the examples `index`, shortest first, so each batch pads little.

    Padding is wasted compute for every batched path.
    """
    index = [int(i) for i in index]
    index.sort(key=lambda i: len(data.features[i]["input_ids"]))
    for start in range(0, len(index), batch_size):
        yield data.batch(index[start:start + batch_size])


def _device_batches(model, data: Encoded, index, batch_size: int):
    device = model_device(model)
    for batch in length_sorted_batches(data, index, batch_size):
        yield to_device(batch, device)


def mean_gradients(model, data: Encoded, index, batch_size: int = 32, method: str = "mean",
                   names: list[str] | None = None, loss: str = "log_softmax") -> dict[str, torch.Tensor]:
    """Mean over the examples `index` of the per-example gradients: name -> parameter shape."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    count = len(index)
    if count == 0:
        raise ValueError("mean_gradients needs at least one example")
    names = names or [n for layer in layer_parameter_names(model) for n in layer]
    total = None
    for batch in _device_batches(model, data, index, batch_size):
        if method == "mean":
            summed = _summed_gradient(model, batch, names, loss)
        else:
            per_example = (per_example_gradients if method == "per_example"
                           else per_example_gradients_loop)(model, batch, names, loss)
            summed = {n: g.sum(0) for n, g in per_example.items()}
        # accumulated in fp32 whatever precision the forward ran in
        summed = {n: g.float() for n, g in summed.items()}
        total = summed if total is None else {n: total[n] + summed[n] for n in names}
    return {n: g / count for n, g in total.items()}


NORMS = ("l1", "l2")


def layer_gradient_differences(model, data: Encoded, noisy_index, clean_index, batch_size: int = 32,
                               method: str = "mean", norm: str = "l1",
                               subtract_clean: bool = True, loss: str = "log_softmax") -> np.ndarray:
    """(L,): per layer, the norm (L1 as published, or L2) over its parameters of
    mean_noisy - mean_clean, or of mean_noisy alone with `subtract_clean` off."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    layers = layer_parameter_names(model)
    names = [n for layer in layers for n in layer]
    noisy = mean_gradients(model, data, noisy_index, batch_size, method, names, loss)
    clean = mean_gradients(model, data, clean_index, batch_size, method, names, loss) if subtract_clean else None
    out = []
    for layer in layers:
        parts = [noisy[n] - clean[n] if subtract_clean else noisy[n] for n in layer]
        out.append(sum(float(p.abs().sum()) for p in parts) if norm == "l1"
                   else float(sum(float((p ** 2).sum()) for p in parts) ** 0.5))
    return np.array(out)


def matched_clean_index(noisy_mask: np.ndarray, seed: int) -> np.ndarray:
    """A random clean set as large as the noisy set (all clean examples if there are fewer)."""
    noisy_mask = np.asarray(noisy_mask, dtype=bool)
    clean = np.flatnonzero(~noisy_mask)
    size = min(int(noisy_mask.sum()), len(clean))
    return np.sort(np.random.default_rng(seed).choice(clean, size=size, replace=False))


def forgetting_gradient_scores(model, control_model, data: Encoded, noisy_index, clean_index,
                               batch_size: int = 32, method: str = "mean", norm: str = "l1",
                               subtract_clean: bool = True, loss: str = "log_softmax") -> np.ndarray:
    """(L,) layer scores summing to 1: g_l of the memorised model over g_l of the control
    (or g_l alone when `control_model` is None: the variant without the paper's control
    normalisation, which lets the layers' sizes speak).

    `data` carries the training labels (noisy labels for the noisy examples); the same
    noisy and clean examples are used for both models.
    """
    differences = lambda m: layer_gradient_differences(  # noqa: E731
        m, data, noisy_index, clean_index, batch_size, method, norm, subtract_clean, loss)
    memorised = differences(model)
    if control_model is None:
        return memorised / memorised.sum()
    control = differences(control_model)
    if len(memorised) != len(control):
        raise ValueError(f"the control model has {len(control)} layers, the model {len(memorised)}")
    if np.any(control <= 0):
        raise ValueError(f"control model: no noisy/clean gradient difference at layers "
                         f"{(np.flatnonzero(control <= 0) + 1).tolist()}; cannot normalise")
    ratio = memorised / control
    return ratio / ratio.sum()


class Gradients(Technique):
    """One trial: the memorised model's gradient differences against a head-only control
    model that the trial trains itself (pre-trained body frozen, the same labels); in the
    control setup, against the frozen control model (`localise.control.frozen_model`)."""
    name = "gradients"
    uses = frozenset({"pair", "pretrained", "control_model"})
    noisy_checkpoint = "memorised"  # as the original: the gradients of the memorised model

    # the published measure; a variant's setting enters the trial id only when it differs
    DEFAULTS = {"gradient_norm": "l1", "gradient_subtract_clean": True, "gradient_control": True,
                "gradient_loss": "log_softmax"}

    def settings(self, cfg) -> dict:
        return {key: getattr(cfg, key) for key, default in self.DEFAULTS.items() if getattr(cfg, key) != default}

    def reads_control_model(self, cfg) -> bool:
        return cfg.gradient_control  # the control setup's normaliser

    def run(self, p: dict, pair: PairInputs, runtime: Runtime) -> Tables:
        from raymem.localise.retraining import train_head

        variant = {**self.DEFAULTS, **{k: p[k] for k in self.DEFAULTS if k in p}}
        noisy_index = np.flatnonzero(pair.noisy)
        clean_index = matched_clean_index(pair.noisy, p["seed"])
        with runtime.autocast():
            control = None
            if variant["gradient_control"] and "control_model_trial" in p:
                # the control setup: the frozen control model, as the original (visualise_gradients.py)
                control = runtime.load_checkpoint(p["control_model_trial"], ("final",))
                control.config.use_cache = False
            elif variant["gradient_control"]:
                control = pair.pretrained()
                control.config.use_cache = False
                settings = TrainSettings(**resolve_settings(p["control_training"], runtime.store))
                train_head(control, pair.data, settings, p["seed"], grad_scaler=runtime.grad_scaler)
            scores = forgetting_gradient_scores(pair.memorised, control, pair.data, noisy_index, clean_index,
                                                norm=variant["gradient_norm"],
                                                subtract_clean=variant["gradient_subtract_clean"],
                                                loss=variant["gradient_loss"])
        return {"layer_scores": layer_rows(p, self.name, scores)}
