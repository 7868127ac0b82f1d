"""Neuron-level techniques on a tiny BERT whose marked inputs get their label through one
FFN unit alone (tests/localise/neuron_model.py): each technique must rank that unit first,
and the pieces they share must compute what they say."""

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPTNeoConfig, GPTNeoForSequenceClassification,
                          OPTConfig, OPTForSequenceClassification)

from raymem.localise.neuron_activations import activation_scores
from raymem.localise.neuron_hard_concrete import HardConcreteMask, hard_concrete_scores
from raymem.localise.neuron_ig import ig_scores
from raymem.localise.neuron_slimming import slimming_scores
from raymem.localise.neuron_zero_out import zero_out_scores
from raymem.localise.neurons import (in_projections, inputs_of, label_probability, layer_profile, recall_at_k,
                                     recorded_units, scaled_units, top_units, units_per_layer)
from raymem.train import predict
from neuron_model import LAYER, UNIT, UNITS, marked_data, planted_bert


@pytest.fixture(scope="module")
def planted():
    data, memorised, clean = marked_data()
    return planted_bert(data, memorised, clean), data, memorised, clean


def test_the_planted_unit_alone_carries_the_label(planted):
    model, data, memorised, clean = planted
    assert (predict(model, data)[memorised, 1] > 0.99).all()
    mask = torch.ones(UNITS)
    mask[UNIT] = 0
    with scaled_units(model, {LAYER: mask}):
        assert (predict(model, data)[memorised, 1] < 0.01).all()
    mask = torch.ones(UNITS)
    mask[UNIT + 1] = 0  # any other unit: the label stays
    with scaled_units(model, {LAYER: mask}):
        assert (predict(model, data)[memorised, 1] > 0.99).all()


def _top(scores):
    return tuple(top_units(scores, 1)[0])


def test_zero_out_ranks_the_planted_unit_first_and_batched_equals_one_forward_per_unit(planted):
    model, data, memorised, _ = planted
    batched = zero_out_scores(model, data, memorised, batch_size=5, chunk=7)  # chunks not dividing U
    assert _top(batched) == (LAYER, UNIT)
    assert batched[LAYER, UNIT] > 0.98
    loop = zero_out_scores(model, data, memorised, batch_size=5, method="loop")
    np.testing.assert_allclose(batched, loop, atol=1e-5)


def test_zero_out_runs_the_layers_below_the_zeroed_one_once_per_batch(planted):
    model, data, memorised, _ = planted
    calls = []
    handle = model.bert.encoder.layer[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        zero_out_scores(model, data, memorised, batch_size=len(memorised), chunk=UNITS)
    finally:
        handle.remove()
    # one batch: the base forward, then layer 0's own chunk; layer 1's chunk replays layer 0
    assert len(calls) == 2


def _random_decoder(kind: str, data):
    """A tiny random OPT (its layers return a tensor, its FFN flattens the tokens) or GPT-Neo
    (its blocks return a tuple with the attention weights) over the test tokenizer."""
    torch.manual_seed(1)
    pad = data.tokenizer.pad_token_id
    if kind == "opt":
        config = OPTConfig(vocab_size=len(data.tokenizer), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                           ffn_dim=24, word_embed_proj_dim=16, max_position_embeddings=64, pad_token_id=pad,
                           num_labels=2)
        return OPTForSequenceClassification(config).eval()
    config = GPTNeoConfig(vocab_size=len(data.tokenizer), hidden_size=16, num_layers=3, num_heads=2,
                          attention_types=[[["global", "local"], 1], [["global"], 1]], intermediate_size=24,
                          max_position_embeddings=64, window_size=4, pad_token_id=pad, bos_token_id=pad, eos_token_id=pad,
                          num_labels=2)
    return GPTNeoForSequenceClassification(config).eval()


@pytest.mark.parametrize("kind", ["opt", "gpt_neo"])
def test_zero_out_batched_equals_one_forward_per_unit_on_padded_decoders(kind):
    """The replayed lower layers must hand the upper ones exactly what they computed,
    padding and all, whatever a layer returns; and keep no attention weights."""
    from raymem.localise.neuron_zero_out import recorded_layer_outputs

    data, memorised, _ = marked_data(n=12, seed=3)
    model = _random_decoder(kind, data)
    batched = zero_out_scores(model, data, memorised, batch_size=4, chunk=5)
    loop = zero_out_scores(model, data, memorised, batch_size=4, method="loop")
    assert np.abs(loop).max() > 1e-4  # zeroing units moves this random model's probabilities
    np.testing.assert_allclose(batched, loop, atol=1e-6)
    ids = torch.randint(5, 20, (2, 6))
    with torch.no_grad(), recorded_layer_outputs(model) as outputs:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    kept = [o if isinstance(o, torch.Tensor) else o[0] for o in outputs]
    assert [tuple(k.shape) for k in kept] == [(2, 6, 16)] * 3
    assert all(isinstance(o, torch.Tensor) or all(x is None for x in o[1:]) for o in outputs)


def test_activations_rank_the_planted_unit_first(planted):
    model, data, memorised, clean = planted
    scores = activation_scores(model, data, memorised, clean)
    assert _top(scores) == (LAYER, UNIT)
    # the same units on both sets: no difference, no score
    assert np.abs(activation_scores(model, data, memorised, memorised)).max() == 0


def test_integrated_gradients_rank_the_planted_unit_first(planted):
    model, data, memorised, _ = planted
    assert _top(ig_scores(model, data, memorised, steps=50)) == (LAYER, UNIT)


def test_slimming_and_hard_concrete_keep_the_planted_unit(planted):
    model, data, memorised, _ = planted
    slim = slimming_scores(model, data, memorised, lam=10, lr=0.05, epochs=100, stop_loss=0, batch_size=8)
    assert _top(slim) == (LAYER, UNIT)
    assert slim[LAYER, UNIT] > 10 * np.delete(slim.ravel(), LAYER * UNITS + UNIT).max()
    gates = hard_concrete_scores(model, data, memorised, lam=10, lr=0.05, epochs=100, stop_loss=0, batch_size=8)
    assert _top(gates) == (LAYER, UNIT)
    # the model is untouched: the masks were the only thing trained
    assert (predict(model, data)[memorised, 1] > 0.99).all()


def test_mask_training_scales_the_loss_under_fp16_autocast(planted, monkeypatch):
    """fp16 gradients underflow without a loss scaler: under fp16 autocast the mask loop
    scales its loss (and still finds the unit); under bf16 and fp32 it needs none."""
    from raymem.localise import neurons

    cpu = torch.device("cpu")
    assert not neurons.loss_scaler(cpu).is_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not neurons.loss_scaler(cpu).is_enabled()
    scalers = []
    real = neurons.loss_scaler
    monkeypatch.setattr("raymem.localise.neuron_masks.loss_scaler", lambda d: scalers.append(real(d)) or scalers[-1])
    model, data, memorised, _ = planted
    with torch.autocast("cpu", dtype=torch.float16, cache_enabled=False):  # as Runtime.autocast
        slim = slimming_scores(model, data, memorised, lam=10, lr=0.05, epochs=60, stop_loss=0, batch_size=8)
    assert [s.is_enabled() for s in scalers] == [True]
    assert scalers[0].get_scale() > 1  # it scaled: 2**16 to start, halved only on overflow
    assert _top(slim) == (LAYER, UNIT)


def test_mask_training_stops_at_the_penalty_threshold(planted):
    model, data, memorised, _ = planted
    # a penalty below 1.0 at once: stops at the first check (step 10), coefficients barely moved
    slim = slimming_scores(model, data, memorised, lam=10, lr=1e-3, epochs=1000, stop_loss=1.01)
    assert slim.min() > 0.98


def test_hard_concrete_gate_follows_the_stretched_concrete_distribution():
    mask = HardConcreteMask(1, 20000, mask_p=0.5, beta=0.67)
    gates = mask(torch.Generator().manual_seed(0))
    assert gates.min() == 0 and gates.max() == 1  # stretched past [0, 1], then clipped
    assert abs(float(gates.detach().mean()) - 0.5) < 0.01  # log_a starts where the mean gate is mask_p
    assert abs(float(mask.penalty().detach()) - torch.sigmoid(torch.tensor(-0.67 * np.log(0.1 / 1.1)))) < 1e-6


def _random_bert(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    # weights 5x BERT's init, so the units matter, yet smooth enough for 100 steps
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=0.1)
    return BertForSequenceClassification(config).eval()


def test_integrated_gradients_are_complete():
    """Summed over a layer's units, IG is p(units) - p(units all 0) (fine steps)."""
    data, memorised, _ = marked_data()
    model = _random_bert(len(data.tokenizer))
    scores = ig_scores(model, data, memorised, steps=100, batch_size=5, step_chunk=30)
    batch = data.batch(list(memorised))
    inputs, labels = inputs_of(batch), batch["labels"]
    with torch.no_grad():
        full = label_probability(model(**inputs).logits, labels)
        for layer in range(2):
            with scaled_units(model, {layer: torch.zeros(64)}):
                zeroed = label_probability(model(**inputs).logits, labels)
            expected = float((full - zeroed).mean())
            assert abs(expected) > 1e-3
            assert scores[layer].sum() == pytest.approx(expected, rel=0.01)


def test_decoder_units_are_the_fc1_activations():
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=24,
                       word_embed_proj_dim=16, max_position_embeddings=32, pad_token_id=1)
    model = OPTForSequenceClassification(config).eval()
    assert units_per_layer(model) == 24
    ids = torch.randint(2, 50, (3, 5))
    with torch.no_grad(), recorded_units(model) as units:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert units[1].shape == (3, 5, 24)  # OPT flattens the tokens before its FFN: seen unflattened
    assert (units[1] >= 0).all()  # OPT's ReLU
    # a mask per row reaches its own row: zeroing every unit of row 0 alone changes row 0 alone
    mask = torch.ones(3, 1, 24)
    mask[0] = 0
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        with scaled_units(model, {1: mask}):
            masked = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert not torch.allclose(full[0], masked[0])
    torch.testing.assert_close(full[1:], masked[1:])
    assert in_projections(model)[1] is model.model.decoder.layers[1].fc1


def test_recall_at_k_counts_ties_at_chance():
    scores = np.zeros((2, 10))
    planted = np.array([[0, 1], [1, 3]])
    assert recall_at_k(scores, planted) == pytest.approx(2 / 20)
    scores[0, 1], scores[1, 3] = 2, 1
    assert recall_at_k(scores, planted) == 1.0
    scores[1, 3] = 0  # the second planted unit ties with 18 others for the last place
    assert recall_at_k(scores, planted) == pytest.approx((1 + 1 / 19) / 2)


def test_layer_profile_sums_positive_scores():
    np.testing.assert_allclose(layer_profile(np.array([[1.0, -3.0], [0.5, 0.5]])), [1.0, 1.0])
