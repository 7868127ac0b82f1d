"""Zero-Out (Chang et al., 2024): how much the memorised labels need each unit alone.

A unit's score is the drop in the memorised label's probability when that unit alone is
set to 0 at every token, averaged over the memorised examples:

    score(l, j) = mean over memorised x of  p(y~ | x) - p(y~ | x, unit (l, j) zeroed)

MemPi scores the rise in a sequence's LM loss; a classifier's memorised target is one label
per example, so its probability is the measure (a unit that alone carries the label drops
it to the other classes' level).

Batched as MemPi's `fast_zero_out_vector`: for a chunk of C units of one layer, the batch
of B examples is replicated C times (C*B rows) and the layer's units are multiplied by a
per-replica mask, (C*B, 1, U), all ones but a 0 at the replica's own unit; one forward
scores C units. The layers below the zeroed one compute the same for every replica, so they
run once, in the unreplicated forward that gives the base probability: in the replicated
forward each of them is replaced by a stand-in that returns its recorded output, repeated
per replica (`replayed_layers`). That saves (l-1)/L of the layers for layer l, about
(L-1)/(2L) of the work over all layers (benchmarks/neuron_techniques.py).
`method: loop` is the reference, one full forward of the batch per unit.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from raymem.localise.gradients import length_sorted_batches
from raymem.localise.layers import body_layers, layers_replaced, num_layers
from raymem.localise.neurons import inputs_of, label_probability, scaled_units, units_per_layer
from raymem.runtime import model_device, to_device
from raymem.train import Encoded

METHODS = ("batched", "loop")


@torch.inference_mode()
def zero_out_scores(model, data: Encoded, memorised_index, batch_size: int = 16, chunk: int = 64,
                    method: str = "batched") -> np.ndarray:
    """(L, U) mean drop of the label's probability over `memorised_index` per zeroed unit.
    `chunk` units share one forward of the replicated batch (batched)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    model.eval()
    device = model_device(model)
    n_layers, n_units = num_layers(model), units_per_layer(model)
    drops = torch.zeros(n_layers, n_units, dtype=torch.float64)
    for host_batch in length_sorted_batches(data, memorised_index, batch_size):
        batch = to_device(host_batch, device)
        inputs, labels = inputs_of(batch), batch["labels"]
        if method == "loop":
            base = label_probability(model(**inputs).logits, labels)  # (B,)
            for layer in range(n_layers):
                for unit in range(n_units):
                    mask = torch.ones(n_units, device=device)
                    mask[unit] = 0
                    with scaled_units(model, {layer: mask}):
                        p = label_probability(model(**inputs).logits, labels)
                    drops[layer, unit] += float((base - p).sum())
            continue
        with recorded_layer_outputs(model) as outputs:
            base = label_probability(model(**inputs).logits, labels)
        replicas = min(chunk, n_units)
        # replica-major, moved like every batch a model is handed
        repeated = to_device({k: _repeated(v, replicas) for k, v in inputs_of(host_batch).items()}, device)
        for layer in range(n_layers):
            below = _repeated(outputs[layer - 1], replicas) if layer else None
            for start in range(0, n_units, chunk):
                units = torch.arange(start, min(start + chunk, n_units), device=device)
                drops[layer, units.cpu()] += _chunk_drops(model, repeated, labels, base, layer, units, n_units, below)
    return (drops / len(memorised_index)).numpy()


def _chunk_drops(model, repeated: dict, labels, base, layer: int, units: torch.Tensor, n_units: int,
                 below) -> torch.Tensor:
    """Summed over the batch, the probability drop for each of `units` zeroed in turn.
    `repeated`: the batch's inputs, replicated for a full chunk (a shorter last chunk takes
    its first rows); `below`: the output of the layer under `layer`, replicated alike."""
    replicas, rows = len(units), len(labels)
    used = replicas * rows
    mask = torch.ones(replicas, n_units, device=labels.device)
    mask[torch.arange(replicas, device=labels.device), units] = 0
    mask = mask.repeat_interleave(rows, 0)[:, None, :]  # (C*B, 1, U): replica r zeroes units[r]
    with scaled_units(model, {layer: mask}), replayed_layers(model, layer, _first_rows(below, used)):
        p = label_probability(model(**{k: v[:used] for k, v in repeated.items()}).logits, labels.repeat(replicas))
    return (base.repeat(replicas) - p).view(replicas, rows).sum(1).double().cpu()


@contextmanager
def recorded_layer_outputs(model):
    """Within the block, each body layer's hidden-state output is appended to the yielded
    list, bottom layer first (a layer returning a tuple keeps its first element, the hidden
    state, and None for the rest: GPT-Neo's attention weights, B x heads x T x T, are not kept)."""
    outputs: list = []

    def keep(module, args, output):
        outputs.append((output[0], *[None] * (len(output) - 1)) if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(keep) for layer in body_layers(model)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class _Replay(torch.nn.Module):
    """A body layer's stand-in: whatever it is handed, it returns a recorded output."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def _repeated(output, replicas: int):
    """A tensor, or a recorded layer output (a hidden state, or a tuple of one and Nones),
    repeated replica-major along the batch."""
    if isinstance(output, tuple):
        return (_repeated(output[0], replicas), *output[1:])
    return output.repeat(replicas, *([1] * (output.dim() - 1)))


def _first_rows(output, rows: int):
    if output is None or isinstance(output, torch.Tensor):
        return None if output is None else output[:rows]
    return (output[0][:rows], *output[1:])


def replayed_layers(model, layer: int, below):
    """Within the block, the body layers under `layer` are stand-ins that all return `below`,
    the recorded output of the layer just under it: a forward computes only `layer` and those
    above it, from the hidden state the full forward gave `layer` (each stand-in's own output
    is ignored by the next stand-in). Nothing replaced for layer 0."""
    return layers_replaced(model, layer, _Replay(below))


def score(model, data: Encoded, memorised_index, clean_index, p: dict) -> np.ndarray:
    """The registry's entry point (raymem/localise/registry.py): settings from the trial's `p`."""
    return zero_out_scores(model, data, memorised_index, p["batch_size"], p["zero_out_chunk"])
