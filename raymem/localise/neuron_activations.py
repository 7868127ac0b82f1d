"""Activations (Chang et al., 2024, after Geva et al.): units that fire differently on the
memorised examples.

Per unit, its activation averaged over each example's real tokens, then over the memorised
(noisy) examples and over an equally sized clean set; the score is

    |mean_memorised - mean_clean| * ||w_out||

with w_out what the unit writes into the residual stream (its column of the output
projection), as MemPi's `largest_act`. MemPi scores one memorised sequence alone, |mean
activation| * ||w_out|| over its tokens; a classifier's memorised set has clean examples
beside it, so the clean mean is subtracted: a unit busy on every example is no sign of the
relabelled ones.
"""

from __future__ import annotations

import numpy as np
import torch

from raymem.localise.gradients import length_sorted_batches
from raymem.localise.neurons import inputs_of, out_weight_norms, recorded_units
from raymem.models import attention_mask
from raymem.runtime import model_device, to_device
from raymem.train import Encoded


@torch.inference_mode()
def mean_unit_activations(model, data: Encoded, index, batch_size: int = 32) -> torch.Tensor:
    """(L, U): each unit's activation, averaged over an example's real tokens, then over `index`."""
    model.eval()
    device, total = model_device(model), None
    for batch in length_sorted_batches(data, index, batch_size):
        batch = to_device(batch, device)
        mask = attention_mask(batch).float()
        with recorded_units(model) as units:
            model(**inputs_of(batch))
        per_example = torch.stack([(units[layer].float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                                   for layer in sorted(units)])  # (L, batch, U)
        summed = per_example.sum(1)
        total = summed if total is None else total + summed
    return (total / len(index)).cpu()


def activation_scores(model, data: Encoded, memorised_index, clean_index, batch_size: int = 32) -> np.ndarray:
    """(L, U) scores: |mean on memorised - mean on clean| times the unit's output-weight norm."""
    difference = (mean_unit_activations(model, data, memorised_index, batch_size)
                  - mean_unit_activations(model, data, clean_index, batch_size))
    return (difference.abs() * out_weight_norms(model)).numpy()


def score(model, data: Encoded, memorised_index, clean_index, p: dict) -> np.ndarray:
    """The registry's entry point (raymem/localise/registry.py): settings from the trial's `p`."""
    return activation_scores(model, data, memorised_index, clean_index, p["batch_size"])
