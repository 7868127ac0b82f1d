"""INJ and DEL: units planted by masked fitting change alone and carry the fit; deleting
the right units forgets the memorised labels, random ones do not."""

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from raymem.localise.neuron_planting import choose_planted, deletion_rows, plant
from raymem.localise.neuron_zero_out import zero_out_scores
from raymem.localise.neurons import recall_at_k
from raymem.train import predict
from neuron_model import LAYER, UNIT, UNITS, marked_data, planted_bert


def test_choose_planted_spreads_units_over_the_layers():
    planted = choose_planted(4, 64, [2, 3], 5, seed=1)
    assert planted.shape == (5, 2)
    assert sorted(np.bincount(planted[:, 0], minlength=4).tolist()) == [0, 0, 2, 3]
    assert len({tuple(r) for r in planted}) == 5
    assert (choose_planted(4, 64, [2, 3], 5, seed=1) == planted).all()
    with pytest.raises(ValueError, match="outside"):
        choose_planted(4, 64, [5], 2, seed=1)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-autocast"])
def test_plant_changes_only_the_planted_units_and_fits_the_noisy_labels(fp16):
    data, noisy, clean = marked_data(n=32)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(data.tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=0.1)  # a head large enough to move the logits
    model = BertForSequenceClassification(config).eval()
    before = copy.deepcopy(model.state_dict())
    labels = data.labels.numpy()
    loss_before = -np.log(predict(model, data)[noisy, labels[noisy]]).mean()
    planted = choose_planted(2, 64, [2], 8, seed=0)  # 1 in 8 of the layer's units
    # fp16: with its loss scaler; no cast cache, as the trial runtime's autocast (Runtime.autocast)
    with torch.autocast("cpu", dtype=torch.float16, enabled=fp16, cache_enabled=False):
        info = plant(model, data, noisy, clean, planted, seed=0, lr=0.05, epochs=150, stop_loss=0.05, batch_size=8)
    # fp16 fits less far in 150 epochs (0.43 against fp32's 0.19); without a loss scaler its
    # gradients underflowed and the loss rose (0.71)
    assert info["epochs"] == 150 and info["noisy_loss"] < loss_before * (0.9 if fp16 else 0.5)
    if not fp16:
        assert (predict(model, data).argmax(-1)[noisy] == 1).mean() >= 0.75
    after = model.state_dict()
    units = planted[:, 1]
    others = np.setdiff1d(np.arange(64), units)
    for name, value in after.items():
        changed = ~torch.isclose(value, before[name], rtol=0, atol=0)
        if name == "bert.encoder.layer.1.intermediate.dense.weight":
            assert changed[units].any() and not changed[others].any()
        elif name == "bert.encoder.layer.1.intermediate.dense.bias":
            assert not changed[others].any()
        elif name == "bert.encoder.layer.1.output.dense.weight":
            assert changed[:, units].any() and not changed[:, others].any()
        else:
            assert not changed.any(), name
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_deletion_of_the_carrying_unit_forgets_the_memorised_labels():
    data, memorised, clean = marked_data()
    model = planted_bert(data, memorised, clean)
    scores = zero_out_scores(model, data, memorised)
    assert recall_at_k(scores, np.array([[LAYER, UNIT]])) == 1.0
    rows = deletion_rows(model, {"zero_out": scores}, [1.0], data.subset(memorised), data.subset(clean),
                         random_draws=3, seed=0)
    by = {(r["technique"], r["percent"]): r for r in rows.iter_rows(named=True)}
    assert by["zero_out", 0.0]["memorised_acc"] == 1.0
    assert by["zero_out", 1.0]["n_units"] == round(2 * UNITS / 100)
    assert by["zero_out", 1.0]["memorised_acc"] == 0.0
    assert by["random", 1.0]["memorised_acc"] > 0.6  # 1 of 128 units drawn: rarely the one
