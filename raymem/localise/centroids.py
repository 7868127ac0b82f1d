"""Centroid analysis (Dankers & Titov, 2024): at which layer do memorised examples change side?

Input: pooled hidden states computed once, an array (L+1, N, H) with index 0 the
embedding output (`pooled_hidden_state_array` below), each example's current (training)
label, its original label and its noisy flag. Layers in the output use the same index;
as the original code, the events are searched in the model's layers 1..L only.

Per layer and ordered class pair (c1, c2): p1, p2 are the centroids of the *clean*
examples of c1 and c2 (for clean examples current = original label). Every example is
projected on the line p1 -> p2, scaled so p1 = 0 and p2 = 1:

    t(x) = (x - p1) . (p2 - p1) / |p2 - p1|^2

As the original (src/centroid_analysis.py and its notebook's `get_events`), the
projections of all ordered pairs are pooled, and on the pooled sets:

- crossing: the noisy examples (labelled c1, originally c2) start on the c2 side; the
  *last* layer where their mean t falls from above 0.5 to below it (from layer 1, which
  counts as a fall when it is already below). None if it never does.
- initiation: the first layer from which the 87.5th percentile of t over the clean c1
  examples stays below the 12.5th percentile of t over the clean c2 examples at every
  later layer too. None if the last layer is not separated.

Why pooled: in a layer with no class signal, the noisy examples of one pair sit near
n2 / (n1 + n2) on its line (n the classes' clean counts), so a pair whose noisy examples
come from the smaller class "crosses" wherever there is no signal. Pooled over both
directions, weighted by their noisy counts, that bias sits at or above 0.5.

Output rows: class_from = c2 (the noisy examples' original class), class_to = c1 (their
noisy label), event, layer, for every ordered pair (the same rules on that pair alone,
for drill-down), and the pooled events with class_from and class_to null. The layer
scores mark the pooled crossing layer.

The fast path needs one pass of the model and, per class, one einsum over layers and
partner classes. `centroid_events_recomputed` is the naive reference that recomputes
the hidden states for every class pair (the original reloaded the model per layer per
pair) and walks the layers one by one; the benchmark and the tests compare against it.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from raymem.localise.layers import pooled_hidden_states
from raymem.localise.technique import PairInputs, Technique, layer_rows, with_keys
from raymem.runtime import Runtime, model_device, to_device
from raymem.train import Encoded
from raymem.trial import Tables

CROSSING_THRESHOLD = 0.5
UPPER_PERCENTILE, LOWER_PERCENTILE = 87.5, 12.5
EVENT_SCHEMA = {"class_from": pl.Int64, "class_to": pl.Int64, "event": pl.Utf8, "layer": pl.Int64}


def pooled_hidden_state_array(model, data: Encoded, index=None, batch_size: int = 64) -> np.ndarray:
    """(L+1, N, H) float32: pooled hidden states of the examples `index` (default: all)."""
    model.eval()
    device = model_device(model)
    index = list(range(len(data))) if index is None else [int(i) for i in index]
    chunks = [pooled_hidden_states(model, to_device(data.batch(index[start:start + batch_size]), device)).float()
              for start in range(0, len(index), batch_size)]
    return torch.cat(chunks, dim=1).cpu().numpy()


def _first_layer(condition: np.ndarray) -> np.ndarray:
    """First index along axis 0 where `condition` holds, -1 where it never does."""
    return np.where(condition.any(0), condition.argmax(0), -1)


def _last_fall(mean: np.ndarray) -> np.ndarray:
    """Last index along axis 0 where `mean` falls from >= the threshold to below it (index 0
    falls when it starts below); -1 where it never does. NaN never falls."""
    below = mean < CROSSING_THRESHOLD
    above_before = np.concatenate([np.ones_like(below[:1]), mean[:-1] >= CROSSING_THRESHOLD], 0)
    falls = below & above_before
    last = falls.shape[0] - 1 - np.flip(falls, 0).argmax(0)
    return np.where(falls.any(0), last, -1)


def _first_layer_from_which(condition: np.ndarray) -> np.ndarray:
    """First index along axis 0 from which `condition` holds up to the end, -1 if the last fails."""
    holds_to_end = np.flip(np.logical_and.accumulate(np.flip(condition, 0), axis=0), 0)
    return _first_layer(holds_to_end)


def _positions_from(hidden: np.ndarray, centroids: np.ndarray, rows: np.ndarray, c: int) -> np.ndarray:
    """(L+1, rows, K): t of the examples `rows` on the line from centroid c (0) to each centroid k (1)."""
    origin = centroids[:, c][:, None]  # (L+1, 1, H)
    directions = centroids - origin  # (L+1, K, H); zero for k == c
    squared_length = np.einsum("lkh,lkh->lk", directions, directions)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("lnh,lkh->lnk", hidden[:, rows] - origin, directions) / squared_length[:, None]


def _event_frame(crossing: np.ndarray, initiation: np.ndarray, pooled: tuple[int, int] | None = None
                 ) -> pl.DataFrame:
    """Rows from (K, K) arrays indexed [c1, c2] and the pooled (crossing, initiation),
    layers 1-based with -1 for never."""
    rows = []
    if pooled is not None:
        rows += [{"class_from": None, "class_to": None, "event": event, "layer": None if layer < 0 else int(layer)}
                 for event, layer in zip(("crossing", "initiation"), pooled)]
    n_classes = crossing.shape[0]
    for c1 in range(n_classes):
        for c2 in range(n_classes):
            if c1 == c2:
                continue
            for event, layers in (("crossing", crossing), ("initiation", initiation)):
                layer = int(layers[c1, c2])
                rows.append({"class_from": c2, "class_to": c1, "event": event,
                             "layer": None if layer < 0 else layer})
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def _check_inputs(hidden, labels, original_labels, noisy):
    hidden = np.asarray(hidden, dtype=np.float64)  # float64: projections subtract large dot products
    labels, original_labels = np.asarray(labels), np.asarray(original_labels)
    noisy = np.asarray(noisy, dtype=bool)
    if hidden.ndim != 3 or not (hidden.shape[1] == len(labels) == len(original_labels) == len(noisy)):
        raise ValueError(f"hidden must be (L+1, N, H) with N = {len(labels)} labels, got {hidden.shape}")
    return hidden, labels, original_labels, noisy


def centroid_events(hidden: np.ndarray, labels: np.ndarray, original_labels: np.ndarray, noisy: np.ndarray,
                    n_classes: int | None = None) -> pl.DataFrame:
    """Crossing and initiation layers, pooled and per ordered class pair, from hidden states computed once."""
    hidden, labels, original_labels, noisy = _check_inputs(hidden, labels, original_labels, noisy)
    hidden = hidden[1:]  # the model's layers 1..L: the embeddings are not searched
    n_classes = n_classes or int(max(labels.max(), original_labels.max())) + 1
    n_layers = hidden.shape[0]
    clean = ~noisy

    centroids = np.full((n_layers, n_classes, hidden.shape[2]), np.nan)
    for c in range(n_classes):
        members = clean & (labels == c)
        if members.any():
            centroids[:, c] = hidden[:, members].mean(1)

    # [l, c1, c2]: percentiles on the line c1 -> c2 (NaN where a class has no clean examples)
    upper_c1 = np.full((n_layers, n_classes, n_classes), np.nan)
    lower_c2 = np.full((n_layers, n_classes, n_classes), np.nan)
    noisy_sum = np.zeros((n_layers, n_classes, n_classes))
    noisy_count = np.zeros((n_classes, n_classes))
    pooled_c1 = []  # (L, ...) t of the clean examples of every pair's c1 (a pair's c2's: 1 - t)
    for c in range(n_classes):
        members = np.flatnonzero(clean & (labels == c))
        if len(members):
            t_from_c = _positions_from(hidden, centroids, members, c)  # c is c1, every k a c2
            upper_c1[:, c, :] = np.percentile(t_from_c, UPPER_PERCENTILE, axis=1)
            lower_c2[:, :, c] = np.percentile(1 - t_from_c, LOWER_PERCENTILE, axis=1)  # c is c2: t_kc = 1 - t_ck
            partners = [k for k in range(n_classes) if k != c]
            pooled_c1.append(t_from_c[:, :, partners].reshape(n_layers, -1))
        moved = np.flatnonzero(noisy & (original_labels == c))  # c is c2, their label the c1
        if len(moved):
            t_from_c = _positions_from(hidden, centroids, moved, c)
            t_on_own_pair = 1 - t_from_c[:, np.arange(len(moved)), labels[moved]]  # (L, moved)
            np.add.at(noisy_sum, (slice(None), labels[moved], c), t_on_own_pair)  # (layer, c1, c2)
            np.add.at(noisy_count, (labels[moved], c), 1)

    with np.errstate(invalid="ignore", divide="ignore"):
        mean_noisy = noisy_sum / noisy_count
        pooled_noisy = noisy_sum.sum((1, 2)) / noisy_count.sum()  # weighted by each pair's noisy count
    crossing = _last_fall(mean_noisy)  # NaN (no examples) never falls
    initiation = _first_layer_from_which(upper_c1 < lower_c2)
    pooled = (int(_last_fall(pooled_noisy)), -1)
    if pooled_c1:  # pairs whose partner has no clean examples give NaN: left out
        t_c1 = np.concatenate(pooled_c1, 1)
        # every pair's c2 examples are some pair's c1 examples seen from the other end: 1 - t
        upper = np.nanpercentile(t_c1, UPPER_PERCENTILE, axis=1)
        lower = np.nanpercentile(1 - t_c1, LOWER_PERCENTILE, axis=1)
        pooled = (pooled[0], int(_first_layer_from_which(upper < lower)))
    return _event_frame(_one_based(crossing), _one_based(initiation), tuple(_one_based(np.array(pooled))))


def _one_based(index: np.ndarray) -> np.ndarray:
    """Indices into layers 1..L to layer numbers, -1 (never) kept."""
    return np.where(index < 0, -1, index + 1)


def pair_events(hidden: np.ndarray, labels: np.ndarray, original_labels: np.ndarray, noisy: np.ndarray,
                c1: int, c2: int) -> tuple[int | None, int | None]:
    """(crossing, initiation) of one pair, layer by layer with plain loops: the reference."""
    hidden, labels, original_labels, noisy = _check_inputs(hidden, labels, original_labels, noisy)
    clean_c1, clean_c2 = ~noisy & (labels == c1), ~noisy & (labels == c2)
    moved = noisy & (labels == c1) & (original_labels == c2)
    crossing, separated, before = None, [], np.inf
    for layer in range(1, hidden.shape[0]):  # the model's layers, not the embeddings
        if not clean_c1.any() or not clean_c2.any():
            separated.append(False)
            continue
        p1, p2 = hidden[layer, clean_c1].mean(0), hidden[layer, clean_c2].mean(0)
        direction = p2 - p1

        def position(rows):
            with np.errstate(invalid="ignore", divide="ignore"):  # equal centroids: NaN, never an event
                return (hidden[layer, rows] - p1) @ direction / (direction @ direction)

        if moved.any():
            mean = position(moved).mean()
            if before >= CROSSING_THRESHOLD and mean < CROSSING_THRESHOLD:
                crossing = layer  # the last fall below the threshold counts
            before = mean
        separated.append(np.percentile(position(clean_c1), UPPER_PERCENTILE)
                         < np.percentile(position(clean_c2), LOWER_PERCENTILE))
    initiation = None
    for layer in range(len(separated), 0, -1):  # walk back while the separation holds
        if not separated[layer - 1]:
            break
        initiation = layer
    return crossing, initiation


def centroid_events_recomputed(model, data: Encoded, labels: np.ndarray, original_labels: np.ndarray,
                               noisy: np.ndarray, n_classes: int | None = None, batch_size: int = 64,
                               pair_examples_only: bool = False) -> pl.DataFrame:
    """Naive reference: per class pair, recompute the hidden states, then `pair_events`.

    With `pair_examples_only` each pair runs the model on just the examples it needs
    (clean c1, clean c2, noisy c2 -> c1) instead of all of them.
    """
    labels, original_labels = np.asarray(labels), np.asarray(original_labels)
    noisy = np.asarray(noisy, dtype=bool)
    n_classes = n_classes or int(max(labels.max(), original_labels.max())) + 1
    crossing = np.full((n_classes, n_classes), -1)
    initiation = np.full((n_classes, n_classes), -1)  # per pair only: the reference for drill-down
    for c1 in range(n_classes):
        for c2 in range(n_classes):
            if c1 == c2:
                continue
            rows = np.arange(len(labels))
            if pair_examples_only:
                rows = np.flatnonzero((labels == c1) | ((labels == c2) & ~noisy))
            hidden = pooled_hidden_state_array(model, data, rows, batch_size)
            cross, init = pair_events(hidden, labels[rows], original_labels[rows], noisy[rows], c1, c2)
            crossing[c1, c2] = -1 if cross is None else cross
            initiation[c1, c2] = -1 if init is None else init
    return _event_frame(crossing, initiation)


def crossing_scores(events: pl.DataFrame, n_layers: int) -> np.ndarray:
    """Centroid layer scores: 1 at the pooled crossing layer, 0 elsewhere (all 0 if none)."""
    pooled = events.filter(pl.col("class_from").is_null() & (pl.col("event") == "crossing"))["layer"]
    scores = np.zeros(n_layers)
    if pooled.len() and pooled[0] is not None:
        scores[pooled[0] - 1] = 1.0
    return scores


class Centroids(Technique):
    """One trial: numpy arithmetic on the pair's stored hidden states (no model runs)."""
    name = "centroids"
    uses = frozenset({"hidden"})

    def run(self, p: dict, pair: PairInputs, runtime: Runtime) -> Tables:
        hidden = pair.hidden()
        events = centroid_events(hidden, pair.labels, pair.train["original_label"].to_numpy(), pair.noisy,
                                 p["n_labels"])
        return {"events": with_keys(p, events, self.name),
                "layer_scores": layer_rows(p, self.name, crossing_scores(events, hidden.shape[0] - 1))}
