"""The training loop that Slimming and Hard Concrete share: a learnt mask over every unit.

The model's weights stay fixed (only the mask is differentiated, so nothing of the model
changes); each step takes one batch of memorised examples, in a shuffled order seeded by
the caller, and minimises

    cross-entropy on their memorised labels  +  lambda * the mask's sparsity penalty

with Adam, as MemPi's `slim` and `hard_concrete`: every 10 steps, once the penalty is below
`stop_loss`, training stops (MemPi's early stop). MemPi fits one memorised sequence in one
batch; here the memorised set, one batch a step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raymem.localise.gradients import length_sorted_batches
from raymem.localise.neurons import inputs_of, loss_scaler, scaled_units
from raymem.runtime import model_device, to_device
from raymem.train import Encoded


def train_mask(model, data: Encoded, memorised_index, mask: torch.nn.Module, lam: float, lr: float,
               epochs: int, stop_loss: float, batch_size: int, seed: int) -> int:
    """Train `mask` in place (its forward gives (L, U) scales, its `penalty()` the sparsity
    term); returns the steps taken."""
    model.eval()
    device = model_device(model)
    mask.to(device)
    batches = [to_device(b, device) for b in length_sorted_batches(data, memorised_index, batch_size)]
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in mask.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    scaler = loss_scaler(device)
    order: list[int] = []
    for step in range(1, epochs + 1):
        if not order:
            order = torch.randperm(len(batches), generator=generator).tolist()
        batch = batches[order.pop()]
        scales = mask(generator)
        with scaled_units(model, {layer: scales[layer] for layer in range(len(scales))}):
            logits = model(**inputs_of(batch)).logits
        penalty = mask.penalty()
        if step % 10 == 0 and float(penalty.detach()) < stop_loss:
            return step
        loss = F.cross_entropy(logits.float(), batch["labels"]) + lam * penalty
        grads = torch.autograd.grad(scaler.scale(loss), params)
        for p, g in zip(params, grads):
            p.grad = g
        scaler.step(optimiser)  # unscales first; skips a step whose scaled gradients overflowed
        scaler.update()
        optimiser.zero_grad(set_to_none=True)
    return epochs
