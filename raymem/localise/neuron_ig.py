"""Integrated Gradients on the units (Dai et al.'s knowledge neurons, as Chang et al., 2024).

For one layer at a time, the layer's units a (every token) are replaced by alpha * a for
alpha on `steps` points from 0 to 1 (0 and 1 included, as MemPi's `scaled_input`), and
the gradient of the memorised label's probability with respect to the scaled units is
summed over the steps:

    IG(l, j; x) = a_j * (1/steps) * sum over alpha of  d p(y~ | alpha * a) / d (alpha a_j)

summed over the example's real tokens, then averaged over the memorised examples (signed,
as MemPi ranks `ig-mean`). MemPi replaces the units at the predicted token's position only
(the prompt's next token); a classifier reads its label from every token through
attention, so every token's units are scaled together. Baseline 0, steps 20 (MemPi).
"""

from __future__ import annotations

import numpy as np
import torch

from raymem.localise.gradients import length_sorted_batches
from raymem.localise.layers import num_layers
from raymem.localise.neurons import inputs_of, label_probability, recorded_units, units_hook, units_per_layer
from raymem.models import attention_mask
from raymem.runtime import model_device, to_device
from raymem.train import Encoded


def ig_scores(model, data: Encoded, memorised_index, steps: int = 20, batch_size: int = 8,
              step_chunk: int = 20) -> np.ndarray:
    """(L, U) mean integrated gradient of the label's probability per unit over
    `memorised_index`; `step_chunk` steps share one forward and backward."""
    if steps < 2:
        raise ValueError(f"integrated gradients needs at least 2 steps, got {steps}")
    model.eval()
    device = model_device(model)
    n_layers = num_layers(model)
    total = torch.zeros(n_layers, units_per_layer(model), dtype=torch.float64)
    alphas = torch.linspace(0, 1, steps, device=device)
    for host_batch in length_sorted_batches(data, memorised_index, batch_size):
        batch = to_device(host_batch, device)
        inputs, labels = inputs_of(batch), batch["labels"]
        mask = attention_mask(inputs).float()[..., None]
        with torch.no_grad(), recorded_units(model) as units:
            model(**inputs)
        for layer in range(n_layers):
            original = units[layer].detach()  # (B, T, U)
            gradient_sum = torch.zeros_like(original, dtype=torch.float32)
            for start in range(0, steps, step_chunk):
                chunk = alphas[start:start + step_chunk]
                scaled = (chunk[:, None, None, None] * original[None]).flatten(0, 1).requires_grad_(True)
                # replicated on the host, then moved like every batch a model is handed
                repeated = to_device({k: v.repeat(len(chunk), *([1] * (v.dim() - 1)))
                                      for k, v in inputs_of(host_batch).items()}, device)
                with units_hook(model, layer, lambda _, scaled=scaled: scaled):
                    p = label_probability(model(**repeated).logits, labels.repeat(len(chunk)))
                # each row's probability depends on its own row alone: one backward of the sum
                (gradient,) = torch.autograd.grad(p.sum(), scaled)
                gradient_sum += gradient.view(len(chunk), *original.shape).float().sum(0)
            attribution = original.float() * gradient_sum / steps * mask  # (B, T, U)
            total[layer] += attribution.sum((0, 1)).double().cpu()
    return (total / len(memorised_index)).numpy()


def score(model, data: Encoded, memorised_index, clean_index, p: dict) -> np.ndarray:
    """The registry's entry point (raymem/localise/registry.py): settings from the trial's `p`."""
    return ig_scores(model, data, memorised_index, p["ig_steps"], p["ig_batch_size"])
