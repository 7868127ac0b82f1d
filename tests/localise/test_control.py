"""Scoring the control setup: did a technique's top layers land in the planted pair?"""

import polars as pl
import pytest
import torch

from raymem.stages.control import accuracy_rows, default_pairs


def scores(values: list[float], technique: str = "t") -> pl.DataFrame:
    return pl.DataFrame({"technique": technique, "layer": list(range(1, len(values) + 1)), "score": values})


@pytest.mark.parametrize("values, pair, hit_1, hit_2, on_top", [
    ([0.1, 0.2, 0.5, 0.4], (3, 4), True, 1.0, True),      # the pair on top
    ([0.1, 0.3, 0.5, 0.2], (3, 4), True, 0.5, False),     # top layer in the pair, second outside
    ([0.5, 0.1, 0.2, 0.4], (3, 4), False, 0.5, False),    # top layer outside, second in the pair
    ([0.5, 0.4, 0.2, 0.1], (3, 4), False, 0.0, False),    # both outside the top two
    ([0.0, 0.0, 0.0, 0.0], (1, 2), False, 0.0, False),    # placed nothing: no credit for layer order
    ([0.4, 0.1, 0.4, 0.1], (1, 2), False, 0.5, False),    # a tie at the top with a layer outside
    ([0.4, 0.4, 0.1, 0.1], (1, 2), True, 1.0, True),      # a tie inside the pair is still the pair
    ([0.3, 0.5, 0.3, 0.1], (2, 3), True, 0.5, False),     # second place shared with a layer outside
])
def test_accuracy_as_published_and_ties_earn_nothing(values, pair, hit_1, hit_2, on_top):
    row = accuracy_rows(scores(values), pair, 4).row(0, named=True)
    assert (row["hit_at_1"], row["hit_at_2"], row["pair_on_top"]) == (hit_1, hit_2, on_top)
    # accuracy@2 is the share of the top two layers in the pair: chance 2/L, as published;
    # the stricter pair_on_top has chance 1/C(L,2)
    assert row["chance_at_1"] == row["chance_at_2"] == 0.5
    assert row["chance_pair_on_top"] == pytest.approx(1 / 6)


def test_published_chance_for_twelve_layers():
    row = accuracy_rows(scores([0.0] * 10 + [0.5, 0.4]), (11, 12), 12).row(0, named=True)
    assert row["chance_at_2"] == pytest.approx(1 / 6) and row["chance_pair_on_top"] == pytest.approx(1 / 66)
    assert row["hit_at_2"] == 1.0 and row["pair_on_top"]


def test_one_row_per_technique_and_the_default_pairs():
    frame = pl.concat([scores([0.1, 0.9, 0.8, 0.0], "a"), scores([0.9, 0.0, 0.0, 0.1], "b")])
    rows = {r["technique"]: r for r in accuracy_rows(frame, (2, 3), 4).iter_rows(named=True)}
    assert rows["a"]["top_layers"] == "2,3" and rows["a"]["hit_at_2"] == 1.0
    assert rows["b"]["top_layers"] == "1,4" and not rows["b"]["hit_at_1"]
    assert default_pairs(4) == [(1, 2), (2, 3), (3, 4)]
    assert default_pairs(12) == [(1, 2), (6, 7), (11, 12)]


def test_control_training_alternates_the_tasks_with_two_optimisers():
    """As the original: one pass over each task per epoch, each batch stepping its own
    optimiser; the layers outside the planted pair change only through the auxiliary one."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from raymem.localise.layers import body_layers
    from raymem.pretrain import train_tokenizer
    from raymem.runtime import Runtime
    from raymem.stages.control import train_two_tasks
    from raymem.train import Encoded, TrainSettings

    rng = np.random.default_rng(0)
    words = "red green blue cat dog fish run jump sit tall small big".split()
    texts = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(40)]
    tokenizer = train_tokenizer(texts, 80, 32)
    task = Encoded(tokenizer, texts[:24], None, rng.integers(0, 2, 24), 32)
    auxiliary = Encoded(tokenizer, texts[24:], None, rng.integers(0, 3, 16), 32)
    settings = TrainSettings(epochs=2, lr=1e-2, batch_size=8)

    def trained(auxiliary_lr):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(
            vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
            intermediate_size=32, num_labels=2, pad_token_id=tokenizer.pad_token_id))
        before = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in body_layers(model)]
        head = torch.nn.Linear(16, 3)
        runtime = Runtime("cpu", "fp32")
        train_two_tasks(model, head, task, auxiliary, (2, 3), settings, auxiliary_lr, torch.Generator().manual_seed(1),
                        runtime)
        # beyond float noise: a zero bias stepped at lr 1e-30 is no longer exactly 0
        moved = [any(not torch.allclose(v, b[k], atol=1e-12, rtol=0) for k, v in layer.state_dict().items())
                 for layer, b in zip(body_layers(model), before)]
        return moved

    # an auxiliary learning rate of almost nothing: only the planted pair moves
    assert trained(1e-30) == [False, True, True, False]
    # at a real one, the auxiliary task moves every layer
    assert trained(1e-2) == [True, True, True, True]


class _UnscaleOnceScaler(torch.amp.GradScaler):
    """torch's loss scaler, refusing to unscale any gradient twice in one step. torch checks
    this per optimiser only; two optimisers sharing parameters slip past its check."""

    def __init__(self):
        super().__init__("cpu", init_scale=2.0 ** 8)
        self.unscaled, self.steps = set(), 0

    def unscale_(self, optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    assert id(p) not in self.unscaled, "a gradient unscaled twice in one step"
                    self.unscaled.add(id(p))
        super().unscale_(optimizer)

    def update(self, new_scale=None):
        self.unscaled.clear()
        self.steps += 1
        super().update(new_scale)


def _two_tiny_tasks(layers: int):
    """A binary task of 24 texts, a 3-class auxiliary task of 16, and a tiny BERT for them."""
    import numpy as np
    from transformers import BertConfig, BertForSequenceClassification

    from raymem.pretrain import train_tokenizer
    from raymem.train import Encoded

    rng = np.random.default_rng(0)
    words = "red green blue cat dog fish run jump sit tall small big".split()
    texts = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(40)]
    tokenizer = train_tokenizer(texts, 80, 32)
    task = Encoded(tokenizer, texts[:24], None, rng.integers(0, 2, 24), 32)
    auxiliary = Encoded(tokenizer, texts[24:], None, rng.integers(0, 3, 16), 32)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=32, num_labels=2, pad_token_id=tokenizer.pad_token_id))
    return task, auxiliary, model


def test_fp16_control_training_unscales_each_gradient_once_and_steps_both_tasks(monkeypatch):
    import torch

    from raymem.localise.layers import body_layers
    from raymem.runtime import Runtime
    from raymem.stages.control import train_two_tasks
    from raymem.train import TrainSettings

    task, auxiliary, model = _two_tiny_tasks(layers=4)
    before = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in body_layers(model)]
    runtime = Runtime("cpu", "fp16")
    scaler = _UnscaleOnceScaler()
    monkeypatch.setattr(runtime, "grad_scaler", lambda: scaler)
    train_two_tasks(model, torch.nn.Linear(16, 3), task, auxiliary, (2, 3), TrainSettings(epochs=1, lr=1e-2,
                    batch_size=8), 1e-2, torch.Generator().manual_seed(1), runtime)
    assert scaler.steps == 3 + 2  # every batch of both tasks
    moved = [any(not torch.equal(v, b[k]) for k, v in layer.state_dict().items())
             for layer, b in zip(body_layers(model), before)]
    assert moved == [True, True, True, True]


@pytest.mark.parametrize("variant, memorised_f1, kept", [("noisy", 0.0, True), ("noisy", 1.01, False),
                                                         ("clean", 0.0, False)])
def test_a_noisy_control_model_keeps_a_memorised_checkpoint_for_forgetting_gradients(monkeypatch, variant,
                                                                                      memorised_f1, kept):
    """As the original's main.py, which saved `epoch=memorised` for every model it trained, and
    its gradient analysis read it: the first epoch whose training macro-F1 reaches memorised_f1."""
    import numpy as np
    from transformers import BertConfig, BertForSequenceClassification

    from raymem.pretrain import train_tokenizer
    from raymem.runtime import Runtime
    from raymem.stages import control
    from raymem.trial import Trial

    rng = np.random.default_rng(0)
    words = "red green blue cat dog fish run jump sit tall small big".split()
    texts = list(dict.fromkeys(" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(60)))[:32]
    frame = pl.DataFrame({"text": texts, "text_pair": [None] * 32, "label": [i % 2 for i in range(32)],
                          "original_label": [i % 2 for i in range(32)]})
    tokenizer = train_tokenizer(texts, 80, 32)
    monkeypatch.setattr(control, "train_split", lambda store, trial: frame)
    runtime = Runtime("cpu", "fp32")
    saved = []
    monkeypatch.setattr(runtime, "load_tokenizer", lambda model, max_length=None: tokenizer)
    monkeypatch.setattr(runtime, "load_classifier", lambda model, n, pad: BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=n, pad_token_id=pad)))
    monkeypatch.setattr(runtime, "save_checkpoint", lambda model, name: saved.append(name))
    settings = {"epochs": 6, "lr": 3e-3, "batch_size": 8, "max_length": 32, "warmup": 0.0, "clip": 1.0,
                "weight_decay": 0.0, "freeze_embeddings": False, "batch_order": "shuffled"}
    trial = Trial("control", {"task": "t", "model": "m", "seed": 1, "variant": variant, "pair": [1, 2],
                              "n_labels": 2, "examples_trial": "e", "auxiliary_examples_trial": "a",
                              "auxiliary_n_labels": 2, "auxiliary_lr": 1e-3, "settings": settings,
                              "memorised_f1": memorised_f1}, "s", "/r")
    control.run(trial, runtime)
    assert saved == (["memorised", "final"] if kept else ["final"])
    assert runtime.info["memorised_epoch"] == (1 if kept else None)  # F1 >= 0 at the first epoch


def test_the_frozen_control_model_moves_no_layer_through_the_noisy_task():

    from raymem.localise.layers import body_layers
    from raymem.runtime import Runtime
    from raymem.stages.control import train_two_tasks
    from raymem.train import TrainSettings

    task, auxiliary, model = _two_tiny_tasks(layers=3)
    before = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in body_layers(model)]
    head_before = model.classifier.weight.clone()
    train_two_tasks(model, torch.nn.Linear(16, 3), task, auxiliary, (), TrainSettings(epochs=2, lr=1e-2, batch_size=8),
                    1e-30, torch.Generator().manual_seed(1), Runtime("cpu", "fp32"))
    assert all(torch.allclose(v, b[k], atol=1e-12, rtol=0) for layer, b in zip(body_layers(model), before)
               for k, v in layer.state_dict().items())
    assert not torch.allclose(model.classifier.weight, head_before)  # the head learnt the task


def test_control_pairs_divide_forgetting_gradients_by_the_frozen_control_model():
    from pathlib import Path

    from raymem.config import load_study
    from raymem.study import plan_trials

    study = load_study(Path(__file__).resolve().parents[2] / "studies" / "control.yaml")
    assert study.localise.control.frozen_model
    trials = plan_trials(study, study.results, {"tweet_sentiment": 3, "tweet_polarity": 2},
                         {m: 4 for m in study.models})
    frozen = [t for t in trials if t.stage == "control" and t.params["variant"] == "frozen"]
    assert len(frozen) == len(study.seeds) * len(study.models) and all(t.params["pair"] == [] for t in frozen)
    by_seed = {t.params["seed"]: t.trial_id for t in frozen}
    planted = [t for t in trials if t.stage == "localise" and t.params["pair"]]
    gradients = [t for t in planted if t.params["technique"] == "gradients"]
    assert gradients and all(t.params["control_model_trial"] == by_seed[t.params["seed"]] for t in gradients)
    assert all(by_seed[t.params["seed"]] in t.needs for t in gradients)
    # probing reads it too (its layer-1 baseline); the other techniques do not
    assert not any("control_model_trial" in t.params for t in planted
                   if t.params["technique"] not in ("gradients", "probing"))
    studied = [t for t in trials if t.stage == "localise" and not t.params["pair"] and "technique" in t.params]
    assert not any("control_model_trial" in t.params for t in studied)  # the studied pairs: head-only, as published


def test_probing_in_the_control_setup_scores_layer_one_against_the_frozen_control_model(monkeypatch):
    """visualise_probing.ipynb, control_setup: layer 1's baseline is the frozen (auxiliary-trained) model's."""
    from pathlib import Path

    from raymem.config import load_study
    from raymem.study import plan_trials

    study = load_study(Path(__file__).resolve().parents[2] / "studies" / "control.yaml")
    trials = plan_trials(study, study.results, {"tweet_sentiment": 3, "tweet_polarity": 2},
                         {m: 4 for m in study.models})
    frozen = {t.params["seed"]: t.trial_id for t in trials if t.stage == "control" and t.params["variant"] == "frozen"}
    probing = [t for t in trials if t.stage == "localise" and t.params.get("technique") == "probing"]
    planted = [t for t in probing if t.params["pair"]]
    assert planted and all(t.params["control_model_trial"] == frozen[t.params["seed"]] for t in planted)
    assert not any("control_model_trial" in t.params for t in probing if not t.params["pair"])
    # no technique reads it: none is trained
    bare = study.model_copy(update={"localise": study.localise.model_copy(update={"techniques": ["swapping"]})})
    assert not any(t.stage == "control" and t.params["variant"] == "frozen"
                   for t in plan_trials(bare, bare.results, {"tweet_sentiment": 3, "tweet_polarity": 2},
                                        {m: 4 for m in bare.models}))
