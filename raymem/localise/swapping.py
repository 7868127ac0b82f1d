"""Layer swapping (Dankers & Titov, 2024): which layers of the clean twin undo memorisation.

For every contiguous window [a, b] of the body layers 1..L, the clean twin's weights of
those layers replace the memorised model's (embeddings and head stay memorised). The
accuracy on the noisy examples against their noisy labels says how much memorisation
survives the swap (window error = 1 - noisy accuracy); the accuracy on the clean examples
says how much of the task does. A layer's score averages the errors of the windows that
contain it, first within each window size, then over sizes, so that small and large
windows weigh the same.
"""

from __future__ import annotations

import copy

import numpy as np
import polars as pl

from raymem.localise.layers import body_layers, num_layers
from raymem.localise.technique import PairInputs, Technique, layer_rows, with_keys
from raymem.runtime import Runtime
from raymem.train import Encoded, predict
from raymem.trial import Tables

WINDOW_SCHEMA = {"window_start": pl.Int64, "window_end": pl.Int64, "noisy_acc": pl.Float64,
                 "clean_acc": pl.Float64, "error": pl.Float64}


def windows(n_layers: int) -> list[tuple[int, int]]:
    """Every contiguous window (start, end) of layers 1..n_layers, ends inclusive, by start then end."""
    return [(start, end) for start in range(1, n_layers + 1) for end in range(start, n_layers + 1)]


def copy_layers(target, source, start: int, end: int) -> None:
    """Load `source`'s body layers start..end (1-based, inclusive) into `target`, in place."""
    target_layers, source_layers = body_layers(target), body_layers(source)
    for i in range(start - 1, end):
        target_layers[i].load_state_dict(source_layers[i].state_dict())


def swap_window(memorised, clean, start: int, end: int):
    """A new model: `memorised` with the clean twin's layers start..end; both inputs untouched."""
    _check_twins(memorised, clean)
    swapped = copy.deepcopy(memorised)
    copy_layers(swapped, clean, start, end)
    return swapped


def swapping_windows(memorised, clean, data: Encoded, labels: np.ndarray, noisy: np.ndarray,
                     batch_size: int = 64) -> pl.DataFrame:
    """Noisy and clean accuracy, and the error, of every window swapped into `memorised`.

    `labels` are the labels the memorised model was trained on (noisy ones for the noisy
    examples); `noisy` flags the noisy examples of `data`. Returns one row per window:
    window_start, window_end, noisy_acc, clean_acc, error.
    """
    _check_twins(memorised, clean)
    labels, noisy = np.asarray(labels), np.asarray(noisy, dtype=bool)
    if len(labels) != len(data) or len(noisy) != len(data):
        raise ValueError(f"{len(data)} examples but {len(labels)} labels and {len(noisy)} noisy flags")
    if not noisy.any() or noisy.all():
        raise ValueError("layer swapping needs both noisy and clean examples")
    n_layers = num_layers(memorised)
    working = copy.deepcopy(memorised)  # the one copy every window is swapped into
    rows = []
    for start in range(1, n_layers + 1):
        for end in range(start, n_layers + 1):
            # the windows of one start grow by one layer: only the new layer needs copying
            copy_layers(working, clean, end, end)
            correct = predict(working, data, batch_size).argmax(-1) == labels
            noisy_acc = float(correct[noisy].mean())
            rows.append((start, end, noisy_acc, float(correct[~noisy].mean()), 1.0 - noisy_acc))
        copy_layers(working, memorised, start, n_layers)  # back to the memorised model
    return pl.DataFrame(rows, schema=WINDOW_SCHEMA, orient="row")


def layer_scores_from_windows(frame: pl.DataFrame, n_layers: int) -> np.ndarray:
    """(n_layers,) scores: mean over window sizes of the mean `error` of the windows of that
    size containing the layer. `frame` needs window_start, window_end, error for every window."""
    error = {(s, e): v for s, e, v in frame.select("window_start", "window_end", "error").iter_rows()}
    missing = [w for w in windows(n_layers) if w not in error]
    if missing:
        raise ValueError(f"layer scores need all {n_layers * (n_layers + 1) // 2} windows; "
                         f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    scores = np.empty(n_layers)
    for layer in range(1, n_layers + 1):
        per_size = []
        for size in range(1, n_layers + 1):
            starts = range(max(1, layer - size + 1), min(layer, n_layers - size + 1) + 1)
            per_size.append(np.mean([error[s, s + size - 1] for s in starts]))
        scores[layer - 1] = np.mean(per_size)
    return scores


def _check_twins(memorised, clean) -> None:
    if num_layers(memorised) != num_layers(clean):
        raise ValueError(f"memorised model has {num_layers(memorised)} layers, "
                         f"its clean twin {num_layers(clean)}")


class Swapping(Technique):
    """One trial: every window swapped in turn into one working copy of the memorised model."""
    name = "swapping"
    uses = frozenset({"pair"})

    def run(self, p: dict, pair: PairInputs, runtime: Runtime) -> Tables:
        with runtime.autocast():
            windows = swapping_windows(pair.memorised, pair.clean, pair.data, pair.labels, pair.noisy)
        scores = layer_scores_from_windows(windows, num_layers(pair.memorised))
        return {"window_scores": with_keys(p, windows, self.name), "layer_scores": layer_rows(p, self.name, scores)}
