"""Hard Concrete (Chang et al., 2024, after Louizos et al.'s L0 regularisation): a learnt
stochastic gate per unit.

Each unit has a log-odds parameter log_a; in training its gate is drawn from the stretched,
clipped concrete distribution

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_a) / beta),  gate = clip(s (r - l) + l, 0, 1)

with temperature beta, stretch (l, r) = (-0.1, 1.1), and one draw per unit per step shared by
the batch (MemPi's L0Mask); the penalty is the expected share of open gates, the mean of
sigmoid(log_a - beta log(-l / r)). log_a starts where the gate's mean is `mask_p`. A
unit's score is sigmoid(log_a) after training. Defaults are MemPi's GPT-2 settings at a 1%
ratio (script/ecbd/HC.sh): lambda 100, Adam lr 1e-3, mask_p 0.5, beta 0.67, up to 4000
steps, stop once the penalty is below 0.6.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from raymem.localise.layers import num_layers
from raymem.localise.neuron_masks import train_mask
from raymem.localise.neurons import units_per_layer
from raymem.train import Encoded

DEFAULTS = {"lam": 100.0, "lr": 1e-3, "epochs": 4000, "stop_loss": 0.6, "mask_p": 0.5, "beta": 0.67}
STRETCH = (-0.1, 1.1)


class HardConcreteMask(torch.nn.Module):
    def __init__(self, n_layers: int, n_units: int, mask_p: float, beta: float):
        super().__init__()
        low, high = STRETCH
        p = (mask_p - low) / (high - low)
        self.log_alpha = torch.nn.Parameter(torch.full((n_layers, n_units), math.log(p / (1 - p))))
        self.beta = beta

    def forward(self, generator: torch.Generator | None = None) -> torch.Tensor:
        low, high = STRETCH
        if generator is None:  # the deterministic gate, as MemPi outside training
            s = torch.sigmoid(self.log_alpha)
        else:
            u = torch.rand(self.log_alpha.shape, generator=generator).clamp(1e-4, 1 - 1e-4)
            u = u.to(self.log_alpha.device)
            s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / self.beta)
        return (s * (high - low) + low).clamp(0, 1)

    def penalty(self) -> torch.Tensor:
        low, high = STRETCH
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-low / high)).mean()


def hard_concrete_scores(model, data: Encoded, memorised_index, lam: float = DEFAULTS["lam"],
                         lr: float = DEFAULTS["lr"], epochs: int = DEFAULTS["epochs"],
                         stop_loss: float = DEFAULTS["stop_loss"], mask_p: float = DEFAULTS["mask_p"],
                         beta: float = DEFAULTS["beta"], batch_size: int = 32, seed: int = 0) -> np.ndarray:
    """(L, U) sigmoid(log_a) of gates trained on the memorised examples."""
    mask = HardConcreteMask(num_layers(model), units_per_layer(model), mask_p, beta)
    train_mask(model, data, memorised_index, mask, lam, lr, epochs, stop_loss, batch_size, seed)
    return torch.sigmoid(mask.log_alpha).detach().float().cpu().numpy()


def score(model, data: Encoded, memorised_index, clean_index, p: dict) -> np.ndarray:
    """The registry's entry point (raymem/localise/registry.py): settings from the trial's `p`."""
    return hard_concrete_scores(model, data, memorised_index, p["hc_lambda"], p["hc_lr"], p["hc_epochs"],
                                p["hc_stop_loss"], p["hc_mask_p"], p["hc_beta"], p["mask_batch_size"], p["seed"])
