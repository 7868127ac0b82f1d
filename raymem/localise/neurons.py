"""FFN neurons: reading, scaling and replacing the intermediate units of every layer.

A neuron (unit) is one intermediate unit of a layer's feed-forward block after its
activation: BERT's `intermediate` output, a decoder MLP's fc1 after the activation (a gated
MLP's gate-times-up product). All of these are the input of the block's output projection
(BERT `output.dense`, OPT `fc2`, GPT-2/GPT-Neo `mlp.c_proj`, Pythia `mlp.dense_4h_to_h`,
Llama `mlp.down_proj`), so one forward pre-hook on that projection reads or changes the
units of every architecture, and the projection's weights say what each unit writes.

Layers are 0-based here (the list index into `body_layers`); rows and tables number them
1..L like every other technique.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from transformers.pytorch_utils import Conv1D

from raymem.localise.layers import body_layers, first_module, num_layers
from raymem.train import fp16_autocast

# per layer, where its FFN's input and output projections live, first found first
_OUT_PATHS = ("output.dense", "fc2", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.down_proj")
_IN_PATHS = ("intermediate.dense", "fc1", "mlp.c_fc", "mlp.dense_h_to_4h", "mlp.up_proj")


def _find(layer, paths):
    module = first_module(layer, paths, (torch.nn.Linear, Conv1D))
    if module is None:
        raise TypeError(f"cannot find the feed-forward projections of a {type(layer).__name__}")
    return module


def out_projections(model) -> list[torch.nn.Module]:
    """Per layer, the FFN's output projection: its input is the layer's units."""
    return [_find(layer, _OUT_PATHS) for layer in body_layers(model)]


def in_projections(model) -> list[torch.nn.Module]:
    """Per layer, the FFN's input projection (fc1): its outputs, activated, are the units."""
    return [_find(layer, _IN_PATHS) for layer in body_layers(model)]


def units_per_layer(model) -> int:
    projection = out_projections(model)[0]
    return projection.weight.shape[0] if isinstance(projection, Conv1D) else projection.in_features


def out_weight_norms(model) -> torch.Tensor:
    """(L, U): the L2 norm of what each unit writes into the residual stream."""
    norms = []
    for projection in out_projections(model):
        weight = projection.weight.detach().float()  # Linear (hidden, U); Conv1D (U, hidden)
        norms.append(weight.norm(dim=1 if isinstance(projection, Conv1D) else 0))
    return torch.stack(norms).cpu()


@contextmanager
def _unit_hooks(model, layers, change):
    """Within the block, `change(layer, units)` sees each listed layer's units as (batch,
    tokens, U) before the output projection reads them; what it returns (None: no change)
    is read instead. OPT's layers flatten the tokens to (batch*tokens, U) before their FFN,
    so a pre-hook on each layer notes its (batch, tokens) to unflatten by."""
    blocks, projections, shapes, handles = body_layers(model), out_projections(model), {}, []

    def note_shape(module, args, kwargs, layer):
        hidden = args[0] if args else kwargs["hidden_states"]
        shapes[layer] = hidden.shape[:2]

    def before_projection(module, args, layer):
        units = args[0]
        flat = units.dim() == 2
        changed = change(layer, units.view(*shapes[layer], units.shape[-1]) if flat else units)
        if changed is None:
            return None
        return (changed.reshape(units.shape) if flat else changed, *args[1:])

    for layer in layers:
        handles.append(blocks[layer].register_forward_pre_hook(
            lambda module, args, kwargs, layer=layer: note_shape(module, args, kwargs, layer), with_kwargs=True))
        handles.append(projections[layer].register_forward_pre_hook(
            lambda module, args, layer=layer: before_projection(module, args, layer)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def units_hook(model, layer: int, change):
    """Within the block, layer `layer`'s units (batch, tokens, U) go through `change(units)`,
    whose result the output projection reads instead (a pre-hook: nothing else changes)."""
    return _unit_hooks(model, [layer], lambda _, units: change(units))


def scaled_units(model, scales: dict[int, torch.Tensor]):
    """Multiply each listed layer's units by `scales[layer]`, a tensor broadcastable to
    (batch, tokens, U): (U,) for one mask for all rows, (batch, 1, U) for one per row."""
    return _unit_hooks(model, list(scales), lambda layer, units: units * scales[layer].to(units.dtype))


@contextmanager
def recorded_units(model, layers=None):
    """Record the units of `layers` (default all) in the forwards within: layer -> tensor
    (batch, tokens, U), kept with its graph (detach it where no gradient is wanted)."""
    seen: dict[int, torch.Tensor] = {}
    layers = range(num_layers(model)) if layers is None else layers
    with _unit_hooks(model, layers, lambda layer, units: seen.__setitem__(layer, units)):
        yield seen


def loss_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler for training under the caller's autocast: on where that autocast is
    fp16 (whose small gradients underflow without one), a no-op under bf16 and fp32."""
    return torch.amp.GradScaler(device.type, enabled=fp16_autocast(device))


def inputs_of(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's softmax probability of its label, in fp32."""
    return torch.softmax(logits.float(), -1).gather(-1, labels[:, None]).squeeze(-1)


def top_units(scores: np.ndarray, count: int) -> np.ndarray:
    """(count, 2) [layer, unit] of the highest scores over all layers (global ranking, ties
    broken by position: callers that must not reward ties use `recall_at_k`)."""
    flat = np.argsort(-np.asarray(scores, dtype=float).ravel(), kind="stable")[:count]
    return np.stack(np.unravel_index(flat, scores.shape), axis=1)


def recall_at_k(scores: np.ndarray, planted: np.ndarray) -> float:
    """Share of the planted units among the top k of `scores` (L, U), k = len(planted),
    ranked over all layers. Ties share the last places: units tied with the k-th score
    count in proportion to the places left (the expected recall of a random tie-break), so
    a technique that scores every unit alike gets chance, k / (L*U), never more.
    `planted` is (k, 2) of [layer, unit], 0-based."""
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores).any():
        raise ValueError("recall_at_k: scores hold NaN")
    planted = np.asarray(planted)
    k = len(planted)
    if k == 0:
        raise ValueError("recall_at_k needs at least one planted unit")
    threshold = np.sort(scores.ravel())[::-1][k - 1]
    is_planted = np.zeros(scores.shape, dtype=bool)
    is_planted[planted[:, 0], planted[:, 1]] = True
    above, tied = scores > threshold, scores == threshold
    places_left = k - above.sum()
    hits = (above & is_planted).sum() + (tied & is_planted).sum() * places_left / tied.sum()
    return float(hits / k)


def layer_profile(scores: np.ndarray) -> np.ndarray:
    """(L,) a technique's neuron scores summed per layer, negatives counted as 0 (a negative
    score says the unit works against the memorised labels, not that it holds them)."""
    return np.clip(np.asarray(scores, dtype=float), 0, None).sum(1)
