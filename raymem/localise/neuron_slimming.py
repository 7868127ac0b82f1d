"""Slimming (Chang et al., 2024, after Liu et al.'s network slimming): a mask over the units
that keeps the memorised labels with as few units as it can.

One coefficient per unit, initialised to 1 and clipped to [0, 1] in the forward, scales
the unit at every token; the penalty is the coefficients' L1 norm over their count (MemPi's
`compute_l1_loss`). A unit's score is its clipped coefficient after training: the units the
memorised labels cannot do without keep theirs near 1. Defaults are MemPi's GPT-2 settings
(script/ecbd/slim.sh): lambda 15000, Adam lr 5e-3, up to 4000 steps, stop once the penalty
is below 0.2.
"""

from __future__ import annotations

import numpy as np
import torch

from raymem.localise.layers import num_layers
from raymem.localise.neuron_masks import train_mask
from raymem.localise.neurons import units_per_layer
from raymem.train import Encoded

DEFAULTS = {"lam": 15000.0, "lr": 5e-3, "epochs": 4000, "stop_loss": 0.2}


class SlimMask(torch.nn.Module):
    def __init__(self, n_layers: int, n_units: int):
        super().__init__()
        self.coef = torch.nn.Parameter(torch.ones(n_layers, n_units))

    def forward(self, generator=None) -> torch.Tensor:
        return self.coef.clamp(0, 1)

    def penalty(self) -> torch.Tensor:
        return self.coef.abs().mean()


def slimming_scores(model, data: Encoded, memorised_index, lam: float = DEFAULTS["lam"],
                    lr: float = DEFAULTS["lr"], epochs: int = DEFAULTS["epochs"],
                    stop_loss: float = DEFAULTS["stop_loss"], batch_size: int = 32, seed: int = 0) -> np.ndarray:
    """(L, U) the clipped coefficients of a mask trained on the memorised examples."""
    mask = SlimMask(num_layers(model), units_per_layer(model))
    train_mask(model, data, memorised_index, mask, lam, lr, epochs, stop_loss, batch_size, seed)
    return mask().detach().float().cpu().numpy()


def score(model, data: Encoded, memorised_index, clean_index, p: dict) -> np.ndarray:
    """The registry's entry point (raymem/localise/registry.py): settings from the trial's `p`."""
    return slimming_scores(model, data, memorised_index, p["slim_lambda"], p["slim_lr"], p["slim_epochs"],
                           p["slim_stop_loss"], p["mask_batch_size"], p["seed"])
