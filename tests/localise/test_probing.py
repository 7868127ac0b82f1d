"""Probing: the layer where a noisy/clean signal first appears gets the top score."""

import numpy as np
import pytest
import torch

from raymem.localise.probing import (ProbeSettings, label_probe_curves, macro_f1, noisy_f1, probe_class_weights,
                                     probe_events, probe_f1, probe_f1_by_seed, probing_scores, random_split,
                                     scores_from_f1, shuffled_labels_f1, stratified_split)

SIGNAL_LAYER = 3


def synthetic_hidden(n_layers: int = 6, n: int = 800, width: int = 48, seed: int = 0):
    """Gaussian noise at every layer; from SIGNAL_LAYER on, noisy examples shift along one direction."""
    rng = np.random.default_rng(seed)
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.choice(n, n // 4, replace=False)] = True
    hidden = rng.normal(size=(n_layers, n, width)).astype(np.float32)
    direction = rng.normal(size=width)
    hidden[SIGNAL_LAYER:, noisy] += 3.0 * direction / np.linalg.norm(direction)
    return hidden, noisy


def test_signal_layer_scores_highest_and_earlier_layers_about_zero():
    hidden, noisy = synthetic_hidden()
    f1 = probe_f1_by_seed(hidden, noisy, ProbeSettings(seeds=(1, 2, 3), epochs=40))
    assert f1.shape == (3, 6)
    mean_f1 = f1.mean(0)
    assert mean_f1[SIGNAL_LAYER:].min() > 0.75  # the probe finds the signal
    assert mean_f1[:SIGNAL_LAYER].max() < 0.5  # and nothing before it
    scores = scores_from_f1(f1)
    assert scores.shape == (5,)  # layers 1..L
    assert int(np.argmax(scores)) == SIGNAL_LAYER - 1
    assert scores[SIGNAL_LAYER - 1] > 0.4
    assert scores[:SIGNAL_LAYER - 1].max() < 0.15


@pytest.mark.parametrize("variant", [{}, {"dropout_on": "hidden", "standardise": True, "split_by": "stratified"}])
def test_stacked_seeds_train_exactly_as_each_seed_alone(variant):
    # every seed's probes train in one batched run: each must still get what it would alone
    hidden, noisy = synthetic_hidden(n=300)
    s = ProbeSettings(seeds=(1, 2, 3), epochs=6, select_after=3, **variant)
    alone = np.stack([probe_f1(hidden, noisy, seed, s) for seed in s.seeds])
    assert np.array_equal(probe_f1_by_seed(hidden, noisy, s), alone)
    assert len({tuple(row) for row in alone}) > 1  # the seeds differ: a mix-up would show


def test_probe_width_follows_hidden_size():
    hidden, noisy = synthetic_hidden(n_layers=4, n=400, width=48)
    scores = probing_scores(hidden, noisy, ProbeSettings(seeds=(1,), epochs=3))
    assert scores.shape == (3,) and np.all(scores >= 0)
    narrow, _ = synthetic_hidden(n_layers=4, n=400, width=20)
    assert probe_f1(narrow, noisy, seed=1, s=ProbeSettings(epochs=2)).shape == (4,)
    with pytest.raises(ValueError, match="N=400"):
        probe_f1(hidden[:, :300], noisy, seed=1)


def test_scores_are_positive_parts_of_f1_differences():
    assert np.allclose(scores_from_f1(np.array([0.2, 0.5, 0.4, 0.9])), [0.3, 0.0, 0.5])
    per_seed = np.array([[0.2, 0.6], [0.4, 0.4]])  # averaged over seeds first: 0.3 -> 0.5
    assert np.allclose(scores_from_f1(per_seed), [0.2])


def test_split_is_70_10_20_and_stratified():
    noisy = np.zeros(1000, dtype=bool)
    noisy[::5] = True
    train, val, test = stratified_split(noisy, seed=4)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    assert len(np.unique(np.concatenate([train, val, test]))) == 1000
    assert noisy[train].sum() == 140 and noisy[val].sum() == 20 and noisy[test].sum() == 40


def test_noisy_f1():
    predicted = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    truth = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert torch.allclose(noisy_f1(predicted, truth), torch.tensor([0.5, 0.0]))


def test_the_defaults_are_the_originals():
    s = ProbeSettings()
    # src/probing.py: AdamW(lr=0.0002, weight_decay=1e-5), batches of 32, 100 epochs, the best
    # validation F1 for epoch > 25 (from 0), NLL weights [0.33, 0.67], dropout on the input,
    # a shuffled (not stratified) 70/10/20 split, seeds range(5), raw hidden states
    assert (s.lr, s.weight_decay, s.batch_size, s.epochs, s.select_after) == (2e-4, 1e-5, 32, 100, 26)
    assert (s.dropout, s.dropout_on, s.class_weights, s.split_by, s.standardise) == (
        0.1, "input", "original", "random", False)
    assert s.seeds == (0, 1, 2, 3, 4) and s.split == (0.7, 0.1, 0.2)
    assert probe_class_weights("original", torch.tensor([0, 0, 0, 1])).tolist() == pytest.approx([0.33, 0.67])
    assert probe_class_weights("balanced", torch.tensor([0, 0, 0, 1])).tolist() == pytest.approx([2 / 3, 2.0])


def test_the_random_split_is_a_seeded_shuffle_not_stratified():
    train, val, test = random_split(1000, seed=4)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    assert len(np.unique(np.concatenate([train, val, test]))) == 1000
    noisy = np.zeros(1000, dtype=bool)
    noisy[::5] = True  # stratified would put exactly 20 noisy examples in validation
    shares = {noisy[random_split(1000, seed)[1]].sum() for seed in range(5)}
    assert shares != {20}


@pytest.mark.parametrize("variant", [{}, {"dropout_on": "hidden", "class_weights": "balanced",
                                           "split_by": "stratified", "standardise": True}])
def test_the_originals_probe_and_the_variants_find_the_signal(variant):
    hidden, noisy = synthetic_hidden(n_layers=5, n=600)
    f1 = probe_f1_by_seed(hidden, noisy, ProbeSettings(seeds=(0, 1), epochs=40, **variant)).mean(0)
    assert f1[SIGNAL_LAYER:].min() > 0.75 and f1[:SIGNAL_LAYER].max() < 0.5
    assert int(np.argmax(scores_from_f1(f1))) == SIGNAL_LAYER - 1


def labelled_hidden(n_layers: int = 6, n: int = 900, width: int = 32, classes: int = 3, learnt_at: int = 1,
                    memorised_at: int | None = 4, seed: int = 0):
    """Class directions from `learnt_at` on; the noisy examples sit at their original class
    until `memorised_at`, then at their (noisy) training label's."""
    rng = np.random.default_rng(seed)
    original = rng.integers(0, classes, n)
    noisy = rng.random(n) < 0.2
    labels = np.where(noisy, (original + rng.integers(1, classes, n)) % classes, original)
    directions = 2.5 * rng.normal(size=(classes, width)) / np.sqrt(width) * 2
    hidden = rng.normal(size=(n_layers, n, width)).astype(np.float32)
    for layer in range(learnt_at, n_layers):
        memorised = memorised_at is not None and layer >= memorised_at
        hidden[layer] += directions[np.where(memorised, labels, original)]
    return hidden, labels, original, noisy


def test_macro_f1_counts_the_classes_seen_as_scikit_learn_does():
    predicted = torch.tensor([[0, 1, 1, 2], [0, 0, 0, 0]])
    truth = torch.tensor([0, 1, 2, 2])
    # row 0: F1 per class 1, 2/3, 2/3; row 1: class 0 F1 2/5, classes 1 and 2 F1 0 (seen in the truth)
    assert torch.allclose(macro_f1(predicted, truth, 4), torch.tensor([(1 + 2 / 3 + 2 / 3) / 3, 0.4 / 3]))


def test_the_label_probes_find_where_the_noisy_examples_are_memorised_and_the_task_learnt():
    hidden, labels, original, noisy = labelled_hidden()
    s = ProbeSettings(seeds=(0, 1), epochs=40, select_after=10)
    curves = label_probe_curves(hidden, labels, original, noisy, 3, s)
    assert curves.height == 2 * 2 * 6
    f1 = {(r["probe"], r["examples"], r["layer"]): r["f1"] for r in curves.iter_rows(named=True)}
    assert f1["original_label", "clean", 0] < 0.5 < 0.9 < f1["original_label", "clean", 1]
    assert f1["original_label", "noisy", 3] > 0.8 > 0.3 > f1["noisy_label", "noisy", 3]  # not yet memorised
    assert f1["noisy_label", "noisy", 4] > 0.8 > 0.3 > f1["original_label", "noisy", 4]  # memorised
    chance = shuffled_labels_f1(original, 3)
    assert 0.25 < chance < 0.42
    events = dict(probe_events(curves, chance).select("event", "layer").iter_rows())
    assert events == {"probe_memorisation": 4, "probe_initiation": 1}
    # noisy examples that are never moved to their training label: no memorisation event
    hidden, labels, original, noisy = labelled_hidden(memorised_at=None)
    never = dict(probe_events(label_probe_curves(hidden, labels, original, noisy, 3, s), chance)
                 .select("event", "layer").iter_rows())
    assert never == {"probe_memorisation": None, "probe_initiation": 1}


def test_layer_one_is_scored_against_the_pretrained_models_layer_one_as_the_original():
    # an encoder's layer 0 is one [CLS] vector for every example: a constant predictor. A signal
    # the pre-trained model already carries at layer 1 is no gain of fine-tuning's layer 1
    hidden, noisy = synthetic_hidden(n_layers=4, n=600)
    hidden[0] = hidden[0, :1]  # the degenerate embeddings row
    hidden[1, noisy] += 3.0 * np.ones(hidden.shape[2]) / np.sqrt(hidden.shape[2])
    hidden[2:] = hidden[1]
    pretrained_layer1 = hidden[1]  # the pre-trained model already separates them at layer 1
    s = ProbeSettings(seeds=(1, 2), epochs=30)
    against_embeddings = probing_scores(hidden, noisy, s)
    against_pretrained = probing_scores(hidden, noisy, s, pretrained_layer1=pretrained_layer1)
    assert against_embeddings[0] > 0.5  # the inflated layer 1
    assert against_pretrained[0] < 0.1
    assert np.allclose(against_pretrained[1:], against_embeddings[1:])  # the extra probe leaves the others alone


def test_scores_from_f1_with_a_layer_one_baseline():
    f1 = np.array([[0.0, 0.6, 0.7], [0.0, 0.8, 0.7]])
    assert np.allclose(scores_from_f1(f1, layer1_baseline=np.array([0.5, 0.5])), [0.2, 0.0])
    assert np.allclose(scores_from_f1(f1), [0.7, 0.0])


def test_probing_defaults_to_the_originals_layer_one_baseline():
    from raymem.config import LocaliseConfig
    from raymem.localise.probing import Probing

    assert Probing().settings(LocaliseConfig())["baseline"] == "pretrained"
    assert Probing().settings(LocaliseConfig(probe_baseline="embeddings"))["baseline"] == "embeddings"


def test_the_pretrained_layer_one_is_the_pooled_layer_one_of_each_example_in_order():
    from contextlib import nullcontext
    from types import SimpleNamespace

    import transformers

    from raymem.localise.layers import pooled_hidden_states
    from raymem.localise.probing import BASELINE_BATCH, pretrained_layer1
    from raymem.pretrain import train_tokenizer
    from raymem.train import Encoded

    rng = np.random.default_rng(0)
    words = "the cat sat on a mat dog ran far away big small".split()
    texts = [" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(BASELINE_BATCH + 6)]
    tokenizer = train_tokenizer(texts, vocab_size=40, max_length=16)
    data = Encoded(tokenizer, texts, None, np.zeros(len(texts), dtype=np.int64), max_length=16)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, pad_token_id=tokenizer.pad_token_id, max_position_embeddings=32))
    pair = SimpleNamespace(pretrained=lambda: model, data=data)
    runtime = SimpleNamespace(to_device=lambda batch: batch, autocast=nullcontext)
    got = pretrained_layer1(pair, runtime)
    model.eval()
    want = np.stack([pooled_hidden_states(model, data.batch([i]))[1, 0].numpy() for i in range(len(texts))])
    assert got.shape == (len(texts), 16)
    assert np.allclose(got, want, atol=1e-5)  # batched and padded, or one at a time: the same rows
    assert np.unique(got.round(4), axis=0).shape[0] > 1  # unlike layer 0's [CLS], it varies


def test_a_control_pairs_layer_one_baseline_is_its_frozen_control_model(monkeypatch):
    from types import SimpleNamespace

    import raymem.localise.probing as probing

    frozen, seen = object(), {}
    monkeypatch.setattr(probing, "pretrained_layer1", lambda pair, runtime, model=None: seen.setdefault("model", model)
                        or np.zeros((4, 2)))
    monkeypatch.setattr(probing, "probing_scores", lambda *a, **k: np.zeros(3))
    runtime = SimpleNamespace(device="cpu", load_checkpoint=lambda trial, names: frozen)
    pair = SimpleNamespace(hidden=lambda: np.zeros((4, 4, 2)), noisy=np.array([True, False, False, False]))
    p = {"task": "t", "model": "m", "seed": 1, "pair": "1-2", "baseline": "pretrained", "label_events": True,
         "probe": {"seeds": [0]}, "control_model_trial": "control-frozen", "n_labels": 2}
    probing.Probing().run(p, pair, runtime)
    assert seen["model"] is frozen
