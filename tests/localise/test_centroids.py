"""Centroid analysis: crossing and initiation on planted trajectories, and the fast path
against the per-pair recomputation on a real tiny model."""

import numpy as np
import polars as pl
import pytest
import torch
import transformers

from raymem.localise.centroids import (centroid_events, centroid_events_recomputed, crossing_scores, pair_events,
                                       pooled_hidden_state_array)
from raymem.pretrain import train_tokenizer
from raymem.train import Encoded

N_LAYERS, WIDTH, SEPARATES_AT, MOVES_AT = 7, 8, 2, 4


def centre(k: int, layer: int) -> np.ndarray:
    """Classes 0 and 1 separate at SEPARATES_AT; class 2 always sits beside class 1."""
    spread = 1.5 if layer < SEPARATES_AT else 6.0
    e = np.eye(WIDTH)
    return {0: spread * e[0], 1: spread * e[1], 2: spread * e[1] + 1.0 * e[2]}[k]


@pytest.fixture(scope="module")
def planted():
    """60 clean examples per class, plus two noisy groups (unit Gaussian noise around each centre).

    - 30 labelled 0, originally 1: at class 1's centre until MOVES_AT, then at class 0's.
    - 30 labelled 2, originally 0: at class 0's centre throughout (never cross).
    """
    labels, original, paths = [], [], []
    for k in range(3):
        labels += [k] * 60
        original += [k] * 60
        paths += [[centre(k, layer) for layer in range(N_LAYERS)]] * 60
    labels += [0] * 30
    original += [1] * 30
    paths += [[centre(1 if layer < MOVES_AT else 0, layer) for layer in range(N_LAYERS)]] * 30
    labels += [2] * 30
    original += [0] * 30
    paths += [[centre(0, layer) for layer in range(N_LAYERS)]] * 30
    rng = np.random.default_rng(0)
    hidden = np.transpose(np.array(paths), (1, 0, 2)) + rng.normal(size=(N_LAYERS, len(labels), WIDTH))
    labels, original = np.array(labels), np.array(original)
    return hidden.astype(np.float32), labels, original, labels != original


def event(frame: pl.DataFrame, class_from: int, class_to: int, name: str):
    row = frame.filter((pl.col("class_from") == class_from) & (pl.col("class_to") == class_to)
                       & (pl.col("event") == name))
    assert row.height == 1
    return row["layer"][0]


def test_crossing_and_initiation_at_planted_layers(planted):
    frame = centroid_events(*planted)
    assert frame.columns == ["class_from", "class_to", "event", "layer"]
    assert frame.height == 3 * 2 * 2 + 2  # ordered pairs x events, and the two pooled events
    # noisy examples originally 1 now labelled 0 (c1 = 0, c2 = 1)
    assert event(frame, 1, 0, "crossing") == MOVES_AT
    assert event(frame, 1, 0, "initiation") == SEPARATES_AT
    assert event(frame, 0, 1, "initiation") == SEPARATES_AT  # symmetric in the pair
    # noisy examples originally 0 now labelled 2 never leave class 0
    assert event(frame, 0, 2, "crossing") is None
    # classes 1 and 2 never separate
    assert event(frame, 2, 1, "initiation") is None and event(frame, 1, 2, "initiation") is None
    # a pair without noisy examples has no crossing
    assert event(frame, 0, 1, "crossing") is None


def test_initiation_needs_the_separation_to_last(planted):
    hidden, labels, original, noisy = planted
    hidden = hidden.copy()
    # merge classes 0 and 1 again at the last layer: the separation no longer lasts
    hidden[-1, labels == 1] = hidden[-1, labels == 0][: (labels == 1).sum()]
    frame = centroid_events(hidden, labels, original, noisy)
    assert event(frame, 1, 0, "initiation") is None


def test_fast_path_matches_the_per_pair_reference(planted):
    frame = centroid_events(*planted)
    for c1 in range(3):
        for c2 in range(3):
            if c1 != c2:
                crossing, initiation = pair_events(*planted, c1, c2)
                assert event(frame, c2, c1, "crossing") == crossing
                assert event(frame, c2, c1, "initiation") == initiation


def test_recomputation_reference_agrees_on_a_real_model():
    """Class-specific words separate the classes even in a random BERT; the noisy examples
    written in their new class's words sit on its side (crossing), the others do not."""
    rng = np.random.default_rng(0)
    groups = ["the cat sat on a mat".split(), "dog ran far away fast".split(), "big small red blue green".split()]
    original = np.arange(60) % 3
    labels = original.copy()
    labels[[0, 1, 2, 3, 4, 5, 7]] = [1, 2, 0, 1, 2, 0, 1]
    noisy = labels != original
    looks_like = np.where(np.arange(60) < 6, labels, original)
    texts = [" ".join(rng.choice(groups[k], rng.integers(3, 8))) for k in looks_like]
    tokenizer = train_tokenizer(texts, vocab_size=60, max_length=32)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    data = Encoded(tokenizer, texts, None, labels, max_length=32)

    hidden = pooled_hidden_state_array(model, data, batch_size=16)
    assert hidden.shape == (4, 60, 32)  # the embeddings and 3 layers; events search layers 1-3
    fast = centroid_events(hidden, labels, original, noisy).filter(pl.col("class_from").is_not_null())
    found = fast.filter(pl.col("layer").is_not_null())
    assert set(found["event"]) == {"crossing", "initiation"}  # both kinds occur: a real comparison
    for pair_only in (False, True):
        slow = centroid_events_recomputed(model, data, labels, original, noisy, batch_size=16,
                                          pair_examples_only=pair_only)
        assert slow.equals(fast)


def pooled(frame: pl.DataFrame, name: str):
    row = frame.filter(pl.col("class_from").is_null() & (pl.col("event") == name))
    assert row.height == 1 and row["class_to"][0] is None
    return row["layer"][0]


def test_pooled_events_at_the_planted_layers(planted):
    hidden, labels, original, noisy = planted
    keep = ~(noisy & (labels == 2))  # only the noisy examples that move: 1 -> 0 at MOVES_AT
    frame = centroid_events(hidden[:, keep], labels[keep], original[keep], noisy[keep])
    assert pooled(frame, "crossing") == MOVES_AT
    # four of the six ordered pairs separate at SEPARATES_AT: pooled, so do the percentiles
    assert pooled(frame, "initiation") == SEPARATES_AT
    assert crossing_scores(frame, N_LAYERS - 1).tolist() == [float(layer == MOVES_AT) for layer in range(1, N_LAYERS)]


def test_the_last_fall_below_the_threshold_is_the_crossing(planted):
    hidden, labels, original, noisy = planted
    hidden = hidden.copy()
    moving = noisy & (labels == 0)
    # the moved examples go back to class 1 at layer 5, and cross again at layer 6
    hidden[5, moving] = hidden[5, labels == 1][: moving.sum()]
    frame = centroid_events(hidden, labels, original, noisy)
    assert event(frame, 1, 0, "crossing") == 6
    assert pair_events(hidden, labels, original, noisy, 0, 1)[0] == 6


def test_no_class_signal_and_unbalanced_classes_give_no_pooled_crossing():
    """4:1 classes, every layer noise: per pair, the noisy examples of the small class sit near
    n_small / (n_small + n_large) on their line, below 0.5, so that pair alone 'crosses' at
    layer 1; pooled with the other direction, there is nothing to cross."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(400, int), np.ones(100, int)]
    original = labels.copy()
    flipped = np.r_[rng.choice(400, 60, replace=False), 400 + rng.choice(100, 15, replace=False)]
    labels[flipped] = 1 - labels[flipped]  # 15% of each class
    hidden = rng.normal(size=(7, len(labels), 32))
    frame = centroid_events(hidden, labels, original, labels != original)
    assert event(frame, 1, 0, "crossing") == 1  # the bias, visible per pair
    assert pooled(frame, "crossing") is None
    assert crossing_scores(frame, 6).sum() == 0
