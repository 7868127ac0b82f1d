"""Layer swapping: window enumeration, swaps that must (not) change predictions, layer scores."""

import copy

import numpy as np
import polars as pl
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, OPTConfig, OPTForSequenceClassification

from raymem.localise.layers import body_layers
from raymem.localise.swapping import layer_scores_from_windows, swap_window, swapping_windows, windows
from raymem.pretrain import train_tokenizer
from raymem.train import Encoded, predict

N_LAYERS = 4
WORDS = "red green blue cat dog fish run jump sit tall small big river stone tree".split()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(48)]
    tokenizer = train_tokenizer(texts, 100, 32)
    return Encoded(tokenizer, texts, None, np.zeros(len(texts), dtype=int), 32)


def tiny_classifier(kind: str, vocab_size: int, pad_token_id: int, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "bert":
        config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=N_LAYERS,
                            num_attention_heads=2, intermediate_size=64, pad_token_id=pad_token_id)
        return BertForSequenceClassification(config).eval()
    config = OPTConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=2,
                       ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=pad_token_id)
    return OPTForSequenceClassification(config).eval()


def with_layers_perturbed(model, layers: list[int], scale: float = 1.0, seed: int = 1):
    """A copy of `model` whose given body layers (1-based) get Gaussian noise on every weight."""
    changed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for p in body_layers(changed)[layer - 1].parameters():
                p.add_(scale * torch.randn(p.shape, generator=generator))
    return changed


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("n_layers", [1, 2, 4, 12])
def test_windows_are_all_contiguous_ranges(n_layers):
    found = windows(n_layers)
    assert len(found) == n_layers * (n_layers + 1) // 2 == len(set(found))
    assert all(1 <= start <= end <= n_layers for start, end in found)


@pytest.mark.parametrize("kind", ["bert", "opt"])
def test_swapping_all_layers_gives_the_clean_model(kind, data):
    clean = tiny_classifier(kind, len(data.tokenizer), data.tokenizer.pad_token_id)
    memorised = with_layers_perturbed(clean, list(range(1, N_LAYERS + 1)))
    before_memorised, before_clean = state(memorised), state(clean)
    clean_probs, memorised_probs = predict(clean, data), predict(memorised, data)
    assert not np.allclose(clean_probs, memorised_probs)  # the body layers do matter

    assert np.array_equal(predict(swap_window(memorised, clean, 1, N_LAYERS), data), clean_probs)
    # a window of layers both models share swaps nothing
    third_differs = with_layers_perturbed(clean, [3])
    assert np.array_equal(predict(swap_window(third_differs, clean, 1, 2), data), predict(third_differs, data))
    partial = predict(swap_window(memorised, clean, 2, 3), data)
    assert not np.allclose(partial, clean_probs) and not np.allclose(partial, memorised_probs)
    assert_same_state(state(memorised), before_memorised)
    assert_same_state(state(clean), before_clean)


@pytest.mark.parametrize("kind", ["bert", "opt"])
def test_windows_with_the_only_differing_layer_carry_the_error(kind, data):
    differing = 3
    clean = tiny_classifier(kind, len(data.tokenizer), data.tokenizer.pad_token_id)
    memorised = with_layers_perturbed(clean, [differing], scale=3.0)
    # the memorised model "learnt" its own predictions; noisy = where the clean twin disagrees
    labels = predict(memorised, data).argmax(-1)
    noisy = labels != predict(clean, data).argmax(-1)
    assert 0 < noisy.sum() < len(noisy)
    before = state(memorised)

    frame = swapping_windows(memorised, clean, data, labels, noisy)

    assert frame.columns == ["window_start", "window_end", "noisy_acc", "clean_acc", "error"]
    assert frame.height == N_LAYERS * (N_LAYERS + 1) // 2
    contains = (pl.col("window_start") <= differing) & (pl.col("window_end") >= differing)
    # every window holding the layer undoes all memorisation, every other keeps all of it:
    # exact 0/1 also proves the working copy is restored between starts
    assert frame.filter(contains)["error"].to_list() == [1.0] * 6
    assert frame.filter(~contains)["error"].to_list() == [0.0] * 4
    assert frame["clean_acc"].to_list() == [1.0] * 10
    assert (frame["error"] == 1 - frame["noisy_acc"]).all()
    scores = layer_scores_from_windows(frame, N_LAYERS)
    assert scores.argmax() == differing - 1 and scores[differing - 1] == 1.0
    assert_same_state(state(memorised), before)


def test_layer_scores_average_within_sizes_then_over_sizes():
    errors = {(1, 1): 0.1, (1, 2): 0.2, (1, 3): 0.6, (2, 2): 0.4, (2, 3): 0.9, (3, 3): 0.3}
    frame = pl.DataFrame({"window_start": [s for s, _ in errors], "window_end": [e for _, e in errors],
                          "error": list(errors.values())})
    expected = [
        (0.1 + 0.2 + 0.6) / 3,                # sizes 1, 2, 3: one window each
        (0.4 + (0.2 + 0.9) / 2 + 0.6) / 3,    # size 2 has two windows holding layer 2
        (0.3 + 0.9 + 0.6) / 3,
    ]
    np.testing.assert_allclose(layer_scores_from_windows(frame, 3), expected)
    # a plain mean over all windows holding layer 2 would weigh size 2 twice
    assert not np.isclose(layer_scores_from_windows(frame, 3)[1], (0.2 + 0.6 + 0.4 + 0.9) / 4)


def test_layer_scores_need_every_window():
    frame = pl.DataFrame({"window_start": [1, 1], "window_end": [1, 2], "error": [0.5, 0.5]})
    with pytest.raises(ValueError, match="missing"):
        layer_scores_from_windows(frame, 2)
