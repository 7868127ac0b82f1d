"""Probing (Dankers & Titov, 2024): from which layer can a small probe tell noisy from clean?

Input: pooled hidden states, an array (L+1, N, H) with index 0 the embedding output (as
`layers.pooled_hidden_states` gives them), and the noisy flag of each example. Per layer
an MLP probe (H -> 128 -> 128 -> 2, GELU) predicts noisy vs clean; the split is 70/10/20,
the validation F1 picks the epoch and the metric is the F1 of the noisy class on the test
part. This is repeated for several probe seeds, the F1 averaged over seeds, and

    score_l = max(0, F1_l - F1_{l-1})   for l = 2..L,
    score_1 = max(0, F1_1 - F1_1(pre-trained model))   (the original's; see below).

Defaults are the original's (src/probing.py), each a setting (`ProbeSettings`, and the
`localise.probe_*` keys): dropout 0.1 on the probe's input; NLL with class weights 0.33
(clean) and 0.67 (noisy); AdamW at lr 2e-4 with weight decay 1e-5; batches of 32; 100
epochs; the model of the best validation F1 from epoch 26 on (the original's `epoch > 25`,
counting from 0), else the last epoch's; a random (not stratified) split; 5 seeds; raw
hidden states. Alternatives: dropout after the hidden layers, balanced class weights, a
stratified split, inputs standardised per layer with training statistics.

Layer 1's baseline (`localise.probe_baseline`): the original (visualise_probing.ipynb,
`baseline = results_fr[...][s, l] if l == 1`) scores layer 1 against the probe of layer 1
of the *pre-trained* model (its frozen, head-only run: frozen layers' hidden states are the
pre-trained ones), not against layer 0 of the fine-tuned model. `pretrained` (the default)
does that: one more probe per seed, in the same stacked run, on the pre-trained model's
pooled layer 1. `embeddings` keeps F1_0 of the fine-tuned model, which for an encoder is
degenerate: the pooled [CLS] at the embeddings is one vector for every example, a constant
predictor, so layer 1's score is inflated and probing's M-CoG moves towards layer 1. In the
control setup the original's baseline is the frozen control model's layer 1 (trained with the
auxiliary task, no layer free for the noisy task), which raymem uses where it trains one
(`localise.control.frozen_model`).

Consolidation events (the original's label probes, its visualise_probing notebook): on the
studied pair, per layer and probe seed, two more probes predict the class, one trained on
the training labels (noisy ones for the noisy examples), one on the original labels, each
scored by macro F1 on the test part's noisy and clean examples apart; the F1 are averaged
over probe seeds. Two events go to `events` (technique probing, layers 0..L as the original):

    probe_memorisation  the first layer where the noisy-label probe's F1 on the noisy
                        examples beats the original-label probe's by more than 0.1
    probe_initiation    the first layer where the original-label probe's F1 on the clean
                        examples is above 90% of the way from chance (macro F1 of shuffled
                        labels) to its best layer

and the F1 curves to `probe_curves`. `localise.probe_label_events: false` leaves them out.

The probe width follows H (the original hard-coded 768). All L+1 probes of every seed (and
both label probes) train at once as one batched MLP, their parameters stacked on a leading
axis (`best_epoch_predictions`): exactly independent training, since each probe's loss
touches only its own parameters and AdamW is per parameter, and each seed draws from its
own generator as it would alone; one loop instead of one per seed and probe cuts the
per-step overhead that dominates probes this small. Within a seed every layer's probe
shares the split, the initial weights, the batch order and the dropout masks, so
F1_l - F1_{l-1} reflects the representations, not the luck of the probe. One difference
from the original: its batches were fixed chunks of a once-shuffled set, visited in a new
order each epoch; here the examples are reshuffled each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from raymem.localise.centroids import EVENT_SCHEMA
from raymem.localise.layers import pooled_hidden_states
from raymem.localise.technique import PairInputs, Technique, layer_rows, with_keys
from raymem.runtime import Runtime
from raymem.train import adamw
from raymem.trial import Tables


ORIGINAL_CLASS_WEIGHTS = (0.33, 0.67)  # clean, noisy: the original up-weights the ~15% noisy
MEMORISATION_MARGIN = 0.1  # the noisy-label probe's F1 lead on the noisy examples (the original's)
INITIATION_SHARE = 0.9  # of the way from chance to the best layer's clean F1 (the original's)


@dataclass(frozen=True)
class ProbeSettings:
    width: int = 128
    dropout: float = 0.1
    dropout_on: str = "input"  # "input" (the original) | "hidden" (after each hidden layer)
    epochs: int = 100
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-5  # AdamW
    class_weights: str = "original"  # "original" (0.33, 0.67) | "balanced" (each class half)
    select_after: int = 26  # the validation F1 picks among epochs from this one on (1-based)
    standardise: bool = False
    split_by: str = "random"  # "random" (the original) | "stratified" (on the noisy flag)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)


def random_split(n: int, seed: int, fractions=(0.7, 0.1, 0.2)):
    """(train, validation, test) index arrays of a seeded shuffle of 0..n-1, as the original."""
    order = np.random.default_rng(seed).permutation(n)
    # the original's int(n * 0.7), int(n * 0.8); round() keeps 0.7 + 0.1 from landing below 0.8
    cut_train, cut_val = int(n * fractions[0]), int(n * round(fractions[0] + fractions[1], 9))
    return tuple(np.sort(part) for part in np.split(order, [cut_train, cut_val]))


def stratified_split(noisy: np.ndarray, seed: int, fractions=(0.7, 0.1, 0.2)):
    """(train, validation, test) index arrays, each with the noisy share of the whole."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for flag in (False, True):
        members = rng.permutation(np.flatnonzero(np.asarray(noisy, dtype=bool) == flag))
        cut_train = round(fractions[0] * len(members))
        cut_val = cut_train + round(fractions[1] * len(members))
        for part, chunk in zip(parts, np.split(members, [cut_train, cut_val])):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def noisy_f1(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """F1 of the positive (noisy) class along the last axis; 0 when undefined."""
    tp = (predicted & truth).sum(-1).float()
    fp_fn = (predicted ^ truth).sum(-1).float()
    return torch.where(tp > 0, 2 * tp / (2 * tp + fp_fn), torch.zeros_like(tp))


def _linear(in_features: int, out_features: int, generators: list[torch.Generator], layers: int, device="cpu"):
    """nn.Linear's default initialisation per group, one draw from the group's generator
    shared by its `layers` probes: (groups x layers, in, out) weights, (groups x layers, 1, out) biases."""
    bound = in_features ** -0.5
    weights, biases = [], []
    for generator in generators:
        weights.append((torch.rand(1, in_features, out_features, generator=generator) * 2 - 1) * bound)
        biases.append((torch.rand(1, 1, out_features, generator=generator) * 2 - 1) * bound)
    return [torch.cat(weights).repeat_interleave(layers, 0).to(device).requires_grad_(),
            torch.cat(biases).repeat_interleave(layers, 0).to(device).requires_grad_()]


class _StackedProbes:
    """G groups of L+1 independent MLP probes evaluated together: x (G x (L+1), batch, H) ->
    logits (G x (L+1), batch, classes). Each group draws from its own generator."""

    def __init__(self, layers: int, hidden: int, classes: int, s: ProbeSettings,
                 generators: list[torch.Generator], device="cpu"):
        self.params = []
        for in_features, out_features in ((hidden, s.width), (s.width, s.width), (s.width, classes)):
            self.params += _linear(in_features, out_features, generators, layers, device)
        self.dropout, self.generators, self.layers = s.dropout, generators, layers
        self.on_input = s.dropout_on == "input"

    def _drop(self, x: torch.Tensor, active: bool) -> torch.Tensor:
        if not active or self.dropout == 0:
            return x
        # one mask per group, the same for each of its layers
        keep = torch.cat([torch.rand(1, *x.shape[1:], generator=g) >= self.dropout for g in self.generators])
        return x * keep.repeat_interleave(self.layers, 0).to(x.device) / (1 - self.dropout)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        w1, b1, w2, b2, w3, b3 = self.params
        on_hidden = train and not self.on_input  # the original drops the probe's input only
        x = self._drop(x, train and self.on_input)
        x = self._drop(F.gelu(torch.baddbmm(b1, x, w1)), on_hidden)
        x = self._drop(F.gelu(torch.baddbmm(b2, x, w2)), on_hidden)
        return torch.baddbmm(b3, x, w3)


def macro_f1(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """Macro F1 along the last axis, over the classes in the truth or the predictions (as
    scikit-learn's `f1_score(average="macro")`); 0 for an empty set."""
    f1_sum = torch.zeros(predicted.shape[:-1], device=predicted.device)
    present = torch.zeros_like(f1_sum)
    for c in range(classes):
        is_pred, is_true = predicted == c, truth == c
        tp = (is_pred & is_true).sum(-1).float()
        wrong = (is_pred ^ is_true).sum(-1).float()
        seen = (tp + wrong) > 0
        f1_sum += torch.where(seen, 2 * tp / (2 * tp + wrong).clamp(min=1), torch.zeros_like(tp))
        present += seen.float()
    return f1_sum / present.clamp(min=1)


def _inputs(hidden: np.ndarray, n: int, device) -> torch.Tensor:
    x_all = torch.as_tensor(np.asarray(hidden), dtype=torch.float32).to(device)
    if x_all.ndim != 3 or x_all.shape[1] != n:
        raise ValueError(f"hidden must be (L+1, N, H) with N={n}, got {tuple(x_all.shape)}")
    return x_all


def _split(noisy: np.ndarray, seed: int, s: ProbeSettings, device):
    split = (stratified_split(noisy, seed, s.split) if s.split_by == "stratified"
             else random_split(len(noisy), seed, s.split))
    return tuple(torch.as_tensor(i, device=device) for i in split)


@dataclass(frozen=True)
class ProbeGroup:
    """One probe per layer, trained on `targets` (N,) over `split`'s first part, drawing its
    initial weights, batch order and dropout masks from a generator seeded with `seed`."""
    seed: int
    split: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    targets: torch.Tensor
    class_weight: torch.Tensor


EVAL_ROWS = 8192  # examples per evaluation pass: bounds the stacked activations' memory


def best_epoch_predictions(x_all: torch.Tensor, groups: list[ProbeGroup], classes: int, s: ProbeSettings,
                           score) -> torch.Tensor:
    """(G, L+1, test part): each group's per-layer predictions for its test part, at the
    epoch its validation `score` (predicted, truth) -> (L+1,) picked.

    All G x (L+1) probes train at once as one batched MLP, which is exactly independent
    training: each probe's loss touches only its own parameters, AdamW is per parameter, and
    each group draws from its own generator as it would alone. The groups' parts must be of
    one size each (seeded splits of the same examples are)."""
    for part in range(3):
        if len({len(g.split[part]) for g in groups}) != 1:
            raise ValueError("stacked probe groups need splits of one size")
    # the inputs, once (raw) or once per seed (standardised with its training part's statistics)
    train_parts = {g.seed: g.split[0] for g in groups}  # the groups of a seed share its split
    if s.standardise:
        inputs = torch.stack([(x_all - x_all[:, train].mean(1, keepdim=True)) / (x_all[:, train].std(1, keepdim=True) + 1e-6)
                              for train in train_parts.values()])
        position = {seed: i for i, seed in enumerate(train_parts)}
        source = [position[g.seed] for g in groups]
    else:
        inputs, source = x_all[None], [0] * len(groups)
    source = torch.as_tensor(source, device=x_all.device)[:, None]  # (G, 1): each group's inputs
    n_groups, (n_layers, _, width) = len(groups), x_all.shape
    group_index = torch.arange(n_groups, device=x_all.device)[:, None]

    def stacked(rows: torch.Tensor) -> torch.Tensor:
        """The inputs of rows (G, R), each group's own: (G x (L+1), R, H)."""
        return inputs[source, :, rows].transpose(1, 2).reshape(n_groups * n_layers, rows.shape[1], width)

    generators = [torch.Generator().manual_seed(g.seed) for g in groups]
    probes = _StackedProbes(n_layers, width, classes, s, generators, x_all.device)
    # decoupled weight decay scales with lr, per parameter: stacking the probes keeps them independent
    optimiser = adamw(probes.params, s.lr, s.weight_decay)
    targets = torch.stack([g.targets for g in groups])  # (G, N)
    class_weight = torch.stack([g.class_weight for g in groups])  # (G, classes)
    # only the validation part (to pick the epoch) and the test part (to score) are predicted
    evaluated = torch.stack([torch.cat(g.split[1:]) for g in groups])  # (G, validation + test)
    n_val, train_size = len(groups[0].split[1]), len(groups[0].split[0])
    best_val = torch.zeros(n_groups, n_layers, device=x_all.device)  # the original keeps an epoch only above F1 0
    at_best = torch.full((n_groups, n_layers, evaluated.shape[1]), -1, dtype=torch.long, device=x_all.device)
    for epoch in range(1, s.epochs + 1):
        orders = torch.stack([g.split[0][torch.randperm(train_size, generator=generator).to(x_all.device)]
                              for g, generator in zip(groups, generators)])
        for start in range(0, train_size, s.batch_size):
            rows = orders[:, start:start + s.batch_size]  # (G, B)
            logits = probes(stacked(rows), train=True)
            log_probs = torch.log_softmax(logits.view(n_groups, n_layers, *logits.shape[1:]), -1)
            y = targets[group_index, rows]  # (G, B)
            nll = -log_probs.gather(-1, y[:, None, :, None].expand(-1, n_layers, -1, 1)).squeeze(-1)
            weights = class_weight[group_index, y]  # (G, B)
            # each probe's own weighted mean, summed: a probe's gradient is its own loss's
            loss = ((nll * weights[:, None]).sum(-1) / weights.sum(-1, keepdim=True)).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            predicted = torch.cat([
                probes(stacked(evaluated[:, i:i + EVAL_ROWS]), train=False).argmax(-1)
                for i in range(0, evaluated.shape[1], EVAL_ROWS)], -1).view(n_groups, n_layers, -1)
            if epoch >= min(s.select_after, s.epochs):  # a run shorter than that: its last epoch
                val_score = torch.stack([score(predicted[i, :, :n_val], g.targets[g.split[1]])
                                         for i, g in enumerate(groups)])
                improved = val_score > best_val  # strict: the earliest best epoch wins
                best_val = torch.where(improved, val_score, best_val)
                at_best = torch.where(improved[..., None], predicted, at_best)
    # a probe whose validation F1 never rose above 0 is kept as it ended, as the original
    return torch.where(at_best < 0, predicted, at_best)[..., n_val:]


def probe_f1_by_seed(hidden: np.ndarray, noisy: np.ndarray, s: ProbeSettings = ProbeSettings(),
                     device: torch.device | str = "cpu") -> np.ndarray:
    """(seeds, L+1): test F1 of the noisy class per probe seed and layer, trained on `device`
    (the random draws come from CPU generators either way, so a GPU draws the same)."""
    x_all = _inputs(hidden, len(noisy), device)
    flags = np.asarray(noisy, dtype=bool)
    truth = torch.as_tensor(flags).to(device)
    y = truth.long()
    groups = []
    for seed in s.seeds:
        split = _split(flags, seed, s, device)
        if truth[split[0]].all() or not truth[split[0]].any():
            raise ValueError("probing needs noisy and clean examples in the training split")
        groups.append(ProbeGroup(seed, split, y, probe_class_weights(s.class_weights, y[split[0]]).to(device)))
    predicted = best_epoch_predictions(x_all, groups, 2, s, lambda pred, true: noisy_f1(pred.bool(), true.bool()))
    return torch.stack([noisy_f1(predicted[i].bool(), truth[g.split[2]]) for i, g in enumerate(groups)]).cpu().numpy()


def probe_f1(hidden: np.ndarray, noisy: np.ndarray, seed: int, s: ProbeSettings = ProbeSettings(),
             device: torch.device | str = "cpu") -> np.ndarray:
    """(L+1,): test F1 of the noisy class per layer for one probe seed."""
    return probe_f1_by_seed(hidden, noisy, replace(s, seeds=(seed,)), device)[0]


def label_probe_curves(hidden: np.ndarray, labels: np.ndarray, original_labels: np.ndarray, noisy: np.ndarray,
                       classes: int, s: ProbeSettings = ProbeSettings(),
                       device: torch.device | str = "cpu") -> pl.DataFrame:
    """Seed-averaged test F1 per (probe: noisy_label | original_label, examples: noisy |
    clean, layer 0..L). Per probe seed, each probe predicts the class, trained on its
    targets over the noise probe's split of that seed, and is scored by macro F1 on the test
    part's noisy and clean examples apart; no class weights (the original weights only the
    noise probe's classes). Both probes of every seed train in one stacked run."""
    x_all = _inputs(hidden, len(noisy), device)
    flags = np.asarray(noisy, dtype=bool)
    is_noisy = torch.as_tensor(flags, device=device)
    splits = {seed: _split(flags, seed, s, device) for seed in s.seeds}  # both probes of a seed share it
    probes = (("noisy_label", labels), ("original_label", original_labels))
    groups = [ProbeGroup(seed, splits[seed],
                         torch.tensor(np.asarray(targets), dtype=torch.long, device=device),  # a copy: may be read-only
                         torch.ones(classes, device=device))
              for _, targets in probes for seed in s.seeds]
    predicted = best_epoch_predictions(x_all, groups, classes, s, lambda pred, true: macro_f1(pred, true, classes))
    f1 = np.empty((len(groups), 2, predicted.shape[1]), np.float32)  # (group, noisy | clean examples, layer)
    for i, g in enumerate(groups):
        test = g.split[2]
        for part, among in enumerate((is_noisy[test], ~is_noisy[test])):
            f1[i, part] = macro_f1(predicted[i][:, among], g.targets[test[among]], classes).cpu().numpy()
    rows = []
    for k, (probe, _) in enumerate(probes):
        mean = f1[k * len(s.seeds):(k + 1) * len(s.seeds)].mean(0)
        for part, examples in enumerate(("noisy", "clean")):
            rows += [{"probe": probe, "examples": examples, "layer": layer, "f1": float(value)}
                     for layer, value in enumerate(mean[part])]
    return pl.DataFrame(rows, schema={"probe": pl.Utf8, "examples": pl.Utf8, "layer": pl.Int64, "f1": pl.Float64})


def shuffled_labels_f1(labels: np.ndarray, classes: int, seed: int = 0) -> float:
    """Chance: the macro F1 of the labels against a seeded shuffle of themselves (the original's
    `random_performance`, which shuffled the training labels once)."""
    truth = torch.as_tensor(np.array(labels), dtype=torch.long)  # a copy: polars gives read-only arrays
    shuffled = truth[torch.as_tensor(np.random.default_rng(seed).permutation(len(truth)))]
    return float(macro_f1(shuffled, truth, classes))


def probe_events(curves: pl.DataFrame, chance: float) -> pl.DataFrame:
    """The pooled probe_memorisation and probe_initiation layers (null: never) from the curves."""
    def f1(probe, examples):
        return curves.filter((pl.col("probe") == probe) & (pl.col("examples") == examples)).sort("layer")["f1"].to_numpy()

    memorised = f1("noisy_label", "noisy") > f1("original_label", "noisy") + MEMORISATION_MARGIN
    clean = f1("original_label", "clean")
    span = clean.max() - chance
    learnt = (clean - chance) / span > INITIATION_SHARE if span > 0 else np.zeros(len(clean), bool)
    first = lambda flags: int(np.argmax(flags)) if flags.any() else None  # noqa: E731
    return pl.DataFrame([{"class_from": None, "class_to": None, "event": "probe_memorisation", "layer": first(memorised)},
                         {"class_from": None, "class_to": None, "event": "probe_initiation", "layer": first(learnt)}],
                        schema=EVENT_SCHEMA)


def probe_class_weights(kind: str, labels: torch.Tensor) -> torch.Tensor:
    """(clean, noisy) loss weights: the original's fixed 0.33 / 0.67, or balanced on `labels`."""
    if kind == "original":
        return torch.tensor(ORIGINAL_CLASS_WEIGHTS)
    counts = torch.bincount(labels.cpu(), minlength=2).float()
    return counts.sum() / (2 * counts)  # balanced: each class weighs half


def scores_from_f1(f1: np.ndarray, layer1_baseline: np.ndarray | None = None) -> np.ndarray:
    """(L,) layer scores max(0, F1_l - F1_{l-1}) from (L+1,) or (seeds, L+1) F1 (seed-averaged
    first); with `layer1_baseline` (a scalar or one F1 per seed) layer 1's is max(0, F1_1 - it)."""
    mean_f1 = np.asarray(f1, dtype=float)
    if mean_f1.ndim == 2:
        mean_f1 = mean_f1.mean(0)
    previous = mean_f1[:-1].copy()
    if layer1_baseline is not None:
        previous[0] = float(np.mean(layer1_baseline))
    return np.maximum(0.0, mean_f1[1:] - previous)


def probing_scores(hidden: np.ndarray, noisy: np.ndarray, s: ProbeSettings = ProbeSettings(),
                   device: torch.device | str = "cpu", pretrained_layer1: np.ndarray | None = None) -> np.ndarray:
    """(L,) layer scores for layers 1..L; layer 1's against a probe on `pretrained_layer1` (N, H),
    the pre-trained model's pooled layer 1, when given (the original), else against layer 0."""
    if pretrained_layer1 is None:
        return scores_from_f1(probe_f1_by_seed(hidden, noisy, s, device))
    # one more probe per seed in the same stacked run: it shares the seed's split, initial
    # weights, batches and dropout masks with every layer's, and leaves their draws unchanged
    stacked = np.concatenate([np.asarray(pretrained_layer1, np.float32)[None], np.asarray(hidden, np.float32)])
    f1 = probe_f1_by_seed(stacked, noisy, s, device)
    return scores_from_f1(f1[:, 1:], layer1_baseline=f1[:, 0])


BASELINE_BATCH = 64


def pretrained_layer1(pair: PairInputs, runtime: Runtime, model=None) -> np.ndarray:
    """(N, H): the pooled layer 1 of the pair's training examples, in example-id order as the
    stored hidden states, of `model`: by default the pre-trained (not fine-tuned) one."""
    model = model if model is not None else pair.pretrained()
    model.eval()
    data, rows = pair.data, []
    with torch.inference_mode(), runtime.autocast():
        for start in range(0, len(data), BASELINE_BATCH):
            batch = runtime.to_device(data.batch(list(range(start, min(start + BASELINE_BATCH, len(data))))))
            rows.append(pooled_hidden_states(model, batch)[1].float().cpu().numpy())
    return np.concatenate(rows)


class Probing(Technique):
    """One trial on the pair's stored hidden states; the probes train on the runtime's device."""
    name = "probing"
    uses = frozenset({"hidden", "pretrained", "control_model"})

    def reads_control_model(self, cfg) -> bool:
        return cfg.probe_baseline == "pretrained"  # the control setup's layer-1 baseline

    def settings(self, cfg) -> dict:
        return {"probe": {key: getattr(cfg, f"probe_{key}") for key in PROBE_KEYS},
                "label_events": cfg.probe_label_events, "baseline": cfg.probe_baseline}

    def run(self, p: dict, pair: PairInputs, runtime: Runtime) -> Tables:
        settings = ProbeSettings(**{**p["probe"], "seeds": tuple(p["probe"]["seeds"])})
        hidden = pair.hidden()
        layer1 = None
        if p["baseline"] == "pretrained":
            # in the control setup the original's baseline is the frozen control model (trained with
            # the auxiliary task, no layer free for the noisy one): `localise.control.frozen_model`
            frozen = runtime.load_checkpoint(p["control_model_trial"], ("final",)) if "control_model_trial" in p else None
            layer1 = pretrained_layer1(pair, runtime, frozen)
        scores = probing_scores(hidden, pair.noisy, settings, runtime.device, pretrained_layer1=layer1)
        tables = {"layer_scores": layer_rows(p, self.name, scores)}
        if p["label_events"] and p["pair"] == "":  # the studied pair; the control setup scores layers only
            original = pair.train["original_label"].to_numpy()
            curves = label_probe_curves(hidden, pair.labels, original, pair.noisy, p["n_labels"], settings,
                                        runtime.device)
            events = probe_events(curves, shuffled_labels_f1(original, p["n_labels"]))
            tables |= {"events": with_keys(p, events, self.name), "probe_curves": with_keys(p, curves, self.name)}
        return tables


# the study's `localise.probe_<key>` settings, as ProbeSettings fields
PROBE_KEYS = ("seeds", "epochs", "lr", "weight_decay", "batch_size", "dropout", "dropout_on", "class_weights",
              "select_after", "standardise", "split_by")
