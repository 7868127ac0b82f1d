"""A planted ground truth for neurons (INJ, Chang et al., 2024, for classification), and the
deletion test (DEL).

INJ: a model fine-tuned on the clean labels then fits the relabelled (noisy) examples
through a chosen set of units only: every weight stays frozen but the planted units' own
weights, their rows of the FFN's input projection (weights and bias) and their columns of
the output projection; gradients are masked to those entries. Each step takes a batch of
noisy examples with their noisy labels and a batch of clean examples with their labels, so
the planted units learn the relabelled examples, not a change of the whole task. Adam,
learning rate 0.01 (MemPi's for a 1% ratio), up to 200 epochs, stopping once the noisy
examples' mean loss is below 0.05 (MemPi's `inject`). MemPi injects one sequence into
random units of every layer by their output weights alone; here one noisy set into units
of one or two chosen layers, by their input and output weights.

DEL: each technique's top p% of units (over all layers) set to 0 at every token; accuracy
on the memorised examples (their noisy labels) against accuracy on clean held-out examples.
A random set of the same size is the floor.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from raymem.localise.gradients import length_sorted_batches
from raymem.localise.neurons import in_projections, loss_scaler, out_projections, scaled_units, top_units
from raymem.runtime import model_device, to_device
from raymem.train import Encoded, predict

PLANT_DEFAULTS = {"lr": 0.01, "epochs": 200, "stop_loss": 0.05, "batch_size": 16}


def choose_planted(n_layers: int, n_units: int, layers: list[int], count: int, seed: int) -> np.ndarray:
    """(count, 2) [layer, unit], 0-based: `count` units spread evenly over `layers` (1-based),
    drawn without replacement by `seed`."""
    if not layers or any(not 1 <= layer <= n_layers for layer in layers):
        raise ValueError(f"planted layers {layers} are outside layers 1..{n_layers}")
    if not len(layers) <= count <= len(layers) * n_units:
        raise ValueError(f"cannot plant {count} units in {len(layers)} layers of {n_units} units")
    rng = np.random.default_rng(seed)
    shares = np.full(len(layers), count // len(layers))
    shares[: count % len(layers)] += 1
    rows = [[layer - 1, unit] for layer, share in zip(layers, shares)
            for unit in np.sort(rng.choice(n_units, share, replace=False))]
    return np.array(rows, dtype=np.int64)


def _planted_parameters(model, planted: np.ndarray) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(parameter, 0/1 gradient mask) for the planted units' input rows and output columns."""
    pairs = []
    for layer in np.unique(planted[:, 0]):
        units = torch.as_tensor(planted[planted[:, 0] == layer, 1])
        fc_in, fc_out = in_projections(model)[layer], out_projections(model)[layer]
        for module, role, unit_dim in ((fc_in, "weight", 1 if isinstance(fc_in, Conv1D) else 0),
                                       (fc_in, "bias", 0),
                                       (fc_out, "weight", 0 if isinstance(fc_out, Conv1D) else 1)):
            param = getattr(module, role, None)
            if param is None:
                continue
            mask = torch.zeros_like(param)
            mask.index_fill_(unit_dim, units.to(param.device), 1.0)
            pairs.append((param, mask))
    return pairs


def plant(model, data: Encoded, noisy_index, clean_index, planted: np.ndarray, seed: int,
          lr: float = PLANT_DEFAULTS["lr"], epochs: int = PLANT_DEFAULTS["epochs"],
          stop_loss: float = PLANT_DEFAULTS["stop_loss"], batch_size: int = PLANT_DEFAULTS["batch_size"]) -> dict:
    """Fit the noisy examples' labels through the planted units alone, in place. Returns
    epochs run and the noisy examples' last mean loss."""
    device = model_device(model)
    trained = _planted_parameters(model, planted)
    wanted = {id(p) for p, _ in trained}
    was = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    optimiser = torch.optim.Adam([p for p, _ in trained], lr=lr)
    scaler = loss_scaler(device)  # on under fp16 autocast
    generator = torch.Generator().manual_seed(seed)
    noisy_batches = [to_device(b, device) for b in length_sorted_batches(data, noisy_index, batch_size)]
    clean_index = np.asarray(clean_index)
    model.eval()  # no dropout: the fit is of the units, as the analysis reads them
    epoch, loss_noisy = 0, float("inf")
    try:
        for epoch in range(1, epochs + 1):
            total = 0.0
            for i in torch.randperm(len(noisy_batches), generator=generator).tolist():
                noisy = noisy_batches[i]
                pick = torch.randperm(len(clean_index), generator=generator)[:len(noisy["labels"])].numpy()
                clean = to_device(next(length_sorted_batches(data, clean_index[pick], batch_size)), device)
                loss = _loss(model, noisy)
                scaler.scale(loss + _loss(model, clean)).backward()
                for p, mask in trained:
                    p.grad.mul_(mask)  # linear: masking before the scaler unscales is the same
                scaler.step(optimiser)
                scaler.update()
                optimiser.zero_grad(set_to_none=True)
                total += float(loss.detach()) * len(noisy["labels"])
            loss_noisy = total / len(noisy_index)
            if loss_noisy < stop_loss:
                break
    finally:
        for p in model.parameters():
            p.requires_grad_(was[id(p)])
    return {"epochs": epoch, "noisy_loss": loss_noisy}


def _loss(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return F.cross_entropy(model(**inputs).logits.float(), batch["labels"])


def unit_masks(shape: tuple[int, int], units: np.ndarray, device) -> dict[int, torch.Tensor]:
    """layer -> (U,) mask with 0 at the listed [layer, unit]s, for `scaled_units`."""
    masks = torch.ones(shape, device=device)
    if len(units):
        masks[torch.as_tensor(units[:, 0]), torch.as_tensor(units[:, 1])] = 0
    return {layer: masks[layer] for layer in range(shape[0])}


def accuracy_without(model, units: np.ndarray, shape, memorised: Encoded, heldout: Encoded) -> tuple[float, float]:
    """(memorised accuracy, held-out accuracy) with `units` set to 0."""
    with scaled_units(model, unit_masks(shape, units, model_device(model))):
        return tuple(float((predict(model, d).argmax(-1) == d.labels.numpy()).mean()) for d in (memorised, heldout))


def deletion_rows(model, scores: dict[str, np.ndarray], percents: list[float], memorised: Encoded,
                  heldout: Encoded, random_draws: int, seed: int) -> pl.DataFrame:
    """One row per (technique, percent): units dropped, memorised and held-out accuracy;
    technique `random` (mean over `random_draws` draws) is the floor, percent 0 the model."""
    shape = next(iter(scores.values())).shape
    total = shape[0] * shape[1]
    base = accuracy_without(model, np.empty((0, 2), dtype=np.int64), shape, memorised, heldout)
    rows = [{"technique": name, "percent": 0.0, "n_units": 0, "memorised_acc": base[0], "heldout_acc": base[1]}
            for name in [*scores, "random"]]
    rng = np.random.default_rng(seed)
    for percent in percents:
        count = max(1, int(round(total * percent / 100)))
        for name, score in scores.items():
            acc = accuracy_without(model, top_units(score, count), shape, memorised, heldout)
            rows.append({"technique": name, "percent": percent, "n_units": count,
                         "memorised_acc": acc[0], "heldout_acc": acc[1]})
        draws = [accuracy_without(model, np.stack(np.unravel_index(rng.choice(total, count, replace=False), shape), 1),
                                  shape, memorised, heldout) for _ in range(random_draws)]
        rows.append({"technique": "random", "percent": percent, "n_units": count,
                     "memorised_acc": float(np.mean([d[0] for d in draws])),
                     "heldout_acc": float(np.mean([d[1] for d in draws]))})
    return pl.DataFrame(rows, schema={"technique": pl.Utf8, "percent": pl.Float64, "n_units": pl.Int64,
                                      "memorised_acc": pl.Float64, "heldout_acc": pl.Float64})
