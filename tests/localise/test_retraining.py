"""Layer retraining: replayed frozen-layer outputs give exactly the plain full forward's
results, for an encoder and three decoder families; freezing, resetting and scoring."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPTNeoConfig, GPTNeoForSequenceClassification,
                          GPTNeoXConfig, GPTNeoXForSequenceClassification, OPTConfig, OPTForSequenceClassification)

from raymem.localise import retraining
from raymem.localise.layers import body_layers
from raymem.localise.retraining import (_below_replayed, _next_layer_inputs, head_modules, retrain_window,
                                        retraining_windows, window_errors)
from raymem.localise.swapping import windows
from raymem.models import embedding_parameters
from raymem.pretrain import train_tokenizer
from raymem.train import Encoded, TrainSettings, predict

N_LAYERS = 4
KINDS = ["bert", "opt", "gpt_neo", "gpt_neox"]
WORDS = "red green blue cat dog fish run jump sit tall small big river stone tree".split()
# a large learning rate so a few steps move the weights far enough to tell paths apart
SETTINGS = TrainSettings(epochs=2, lr=1e-3, batch_size=8)


def corpus():
    """48 texts; label = mentions an animal, flipped for the last 16 (the noisy ones)."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(48)]
    labels = np.array([int(any(w in t.split() for w in ("cat", "dog", "fish"))) for t in texts])
    labels[32:] = 1 - labels[32:]
    return texts, labels, train_tokenizer(texts, 100, 32)


@pytest.fixture(scope="module")
def splits():
    """(32 clean training examples, 16 noisy ones with their noisy labels)."""
    texts, labels, tokenizer = corpus()
    return (Encoded(tokenizer, texts[:32], None, labels[:32], 32),
            Encoded(tokenizer, texts[32:], None, labels[32:], 32))


def tiny_classifier(kind: str, tokenizer, seed: int):
    """Dropout on everywhere it exists, so the test also covers the random-number streams."""
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=2,
                  pad_token_id=tokenizer.pad_token_id, max_position_embeddings=64)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(num_hidden_layers=N_LAYERS, intermediate_size=64, **common))
    if kind == "opt":
        return OPTForSequenceClassification(OPTConfig(num_hidden_layers=N_LAYERS, ffn_dim=64, word_embed_proj_dim=32,
                                                      dropout=0.1, **common))
    if kind == "gpt_neo":
        config = GPTNeoConfig(num_layers=N_LAYERS, num_heads=2, attention_types=[[["global", "local"], 2]],
                              window_size=4, embed_dropout=0.1, resid_dropout=0.1, attention_dropout=0.1,
                              bos_token_id=0, eos_token_id=0,
                              **{k: v for k, v in common.items() if k != "num_attention_heads"})
        return GPTNeoForSequenceClassification(config)
    return GPTNeoXForSequenceClassification(GPTNeoXConfig(num_hidden_layers=N_LAYERS, intermediate_size=64,
                                                          hidden_dropout=0.1, attention_dropout=0.1,
                                                          bos_token_id=0, eos_token_id=0, **common))


def pair(kind, tokenizer):
    """(memorised, pre-trained): same architecture, different weights everywhere."""
    return tiny_classifier(kind, tokenizer, seed=0).eval(), tiny_classifier(kind, tokenizer, seed=1).eval()


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def layer_state(model, layer: int) -> list[torch.Tensor]:
    return list(body_layers(model)[layer - 1].state_dict().values())


@pytest.mark.parametrize("kind", KINDS)
def test_replayed_layer_inputs_give_the_full_forward(kind, splits):
    clean, noisy = splits
    model = pair(kind, clean.tokenizer)[0]
    model.config.use_cache = False
    expected = [predict(model, data) for data in (clean, noisy)]
    inputs = None
    for start in range(2, N_LAYERS + 1):
        inputs = _next_layer_inputs(model, inputs, [clean, noisy], batch_size=5)  # batches unlike predict's
        assert inputs.layer == start
        with _below_replayed(model, inputs, [clean, noisy]) as fed:
            for data, probs in zip(fed, expected):
                np.testing.assert_allclose(predict(model, data), probs, atol=1e-6)
    # the real layers are back in place afterwards
    assert all(type(layer).__name__ != "_Replay" for layer in body_layers(model))


@pytest.mark.parametrize("kind", KINDS)
def test_reused_and_recomputed_training_agree(kind, splits):
    clean, _ = splits
    memorised, pretrained = pair(kind, clean.tokenizer)
    before = state(memorised)
    for start, end in [(2, 3), (3, 4), (4, 4)]:
        reused_model = retrain_window(memorised, pretrained, start, end, clean, SETTINGS, seed=3, reuse=True)
        recomputed_model = retrain_window(memorised, pretrained, start, end, clean, SETTINGS, seed=3,
                                          reuse=False)
        reused, recomputed = state(reused_model), state(recomputed_model)
        assert reused.keys() == recomputed.keys() == before.keys()
        moved = max((reused[k] - before[k]).abs().max().item() for k in before)
        assert moved > 1e-3  # training did something, so agreeing means something
        for k in before:
            if k.endswith(("k_proj.bias", "query_key_value.bias")):
                # A key bias cannot change attention (softmax ignores a shift shared by all
                # keys), so its gradient is rounding noise that Adam scales up: compared
                # through the models' outputs below instead.
                continue
            torch.testing.assert_close(reused[k], recomputed[k], atol=1e-6, rtol=1e-5, msg=k)
        np.testing.assert_allclose(predict(reused_model, clean), predict(recomputed_model, clean),
                                   atol=1e-5)
    assert all(torch.equal(v, memorised.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("kind", ["bert", "opt"])
def test_window_scores_agree_and_start_from_the_memorised_model(kind, splits, monkeypatch):
    clean, noisy = splits
    memorised, pretrained = pair(kind, clean.tokenizer)
    before_memorised, before_pretrained = state(memorised), state(pretrained)
    recomputed = retraining_windows(memorised, pretrained, clean, noisy, SETTINGS, seed=3, reuse=False)
    noisy_probs = []  # what the reused path predicts on the noisy examples, window after window

    def keep_probs(*args, **kwargs):
        noisy_probs.append(predict(*args, **kwargs))
        return noisy_probs[-1]

    monkeypatch.setattr(retraining, "predict", keep_probs)
    reused = retraining_windows(memorised, pretrained, clean, noisy, SETTINGS, seed=3, reuse=True)

    assert reused.height == len(noisy_probs) == N_LAYERS * (N_LAYERS + 1) // 2
    assert reused.equals(recomputed)
    # windows after others of the same or an earlier start: the shared working copy was restored
    for start, end in [(1, 3), (2, 2), (4, 4)]:
        alone = retrain_window(memorised, pretrained, start, end, clean, SETTINGS, seed=3, reuse=False)
        index = windows(N_LAYERS).index((start, end))
        np.testing.assert_allclose(noisy_probs[index], predict(alone, noisy), atol=1e-6)
    assert all(torch.equal(v, memorised.state_dict()[k]) for k, v in before_memorised.items())
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in before_pretrained.items())


def test_window_errors_normalise_by_retraining_all_layers():
    accuracy = {(1, 1): 0.9, (1, 2): 0.4, (2, 2): 0.6}
    frame = window_errors(accuracy, 2)
    assert frame.columns == ["window_start", "window_end", "noisy_acc", "normalised_acc", "error"]
    np.testing.assert_allclose(frame["normalised_acc"], [(0.9 - 0.4) / 0.6, 0.0, (0.6 - 0.4) / 0.6])
    np.testing.assert_allclose(frame["error"], [1 - 0.5 / 0.6, 1.0, 1 - 0.2 / 0.6])
    # nothing forgotten even with every layer retrained: no scale to normalise by
    assert window_errors({(1, 1): 1.0, (1, 2): 1.0, (2, 2): 0.5}, 2)["error"].is_nan().all()


@pytest.mark.parametrize("kind", ["bert", "gpt_neox"])
def test_only_the_window_and_head_train_from_pretrained_weights(kind, splits):
    clean, _ = splits
    memorised, pretrained = pair(kind, clean.tokenizer)
    start, end = 2, 3

    reset = retrain_window(memorised, pretrained, start, end, clean, replace(SETTINGS, lr=0.0))
    for layer in range(1, N_LAYERS + 1):
        source = pretrained if start <= layer <= end else memorised
        assert all(torch.equal(a, b) for a, b in zip(layer_state(reset, layer), layer_state(source, layer)))

    trained = retrain_window(memorised, pretrained, start, end, clean, SETTINGS)
    for layer in range(1, N_LAYERS + 1):
        same = [torch.equal(a, b) for a, b in zip(layer_state(trained, layer), layer_state(reset, layer))]
        assert all(same) != (start <= layer <= end)
    embeddings = zip(embedding_parameters(trained), embedding_parameters(memorised))
    assert all(torch.equal(a, b) for a, b in embeddings)
    heads = zip(head_modules(trained), head_modules(memorised))
    assert any(not torch.equal(a, b) for ha, hb in heads for a, b in zip(ha.parameters(), hb.parameters()))
    # handed back unfrozen as the memorised model was, not with the retraining's freezing
    assert [p.requires_grad for p in trained.parameters()] == [p.requires_grad for p in memorised.parameters()]


def test_windows_outside_the_model_are_refused(splits):
    memorised, pretrained = pair("bert", splits[0].tokenizer)
    for window in [(0, 2), (3, 2), (2, N_LAYERS + 1)]:
        with pytest.raises(ValueError, match="not within layers"):
            retraining_windows(memorised, pretrained, *splits, SETTINGS, windows=[window])


@pytest.mark.parametrize("kind", KINDS)
def test_head_modules_run_after_the_body(kind, splits):
    model = pair(kind, splits[0].tokenizer)[0]
    head = {id(p) for m in head_modules(model) for p in m.parameters()}
    body = {id(p) for layer in body_layers(model) for p in layer.parameters()}
    embeddings = {id(p) for p in embedding_parameters(model)}
    assert head and not head & body and not head & embeddings
    # together they are the whole model: nothing is left out of the freezing rules
    assert head | body | embeddings == {id(p) for p in model.parameters()}


def test_working_copy_leaves_the_config_alone(splits):
    memorised, pretrained = pair("opt", splits[0].tokenizer)
    assert memorised.config.use_cache
    retrain_window(memorised, pretrained, 2, 2, splits[0], replace(SETTINGS, epochs=1))
    assert memorised.config.use_cache  # only the working copy skips the key/value cache


@pytest.mark.parametrize("kind", ["bert", "opt"])
def test_train_head_trains_the_head_on_replayed_body_outputs(kind, splits):
    """The head-only model: the body is untouched, the head learns, and replaying the body's
    outputs gives exactly the plain full forward with the body in eval mode."""
    clean, _ = splits
    model = pair(kind, clean.tokenizer)[0]
    model.config.use_cache = False
    before = state(model)
    reference = retraining._working_copy(model)
    reference.requires_grad_(False)
    for module in head_modules(reference):
        module.requires_grad_(True)
    retraining.fine_tune(retraining._TrainFrom(reference, N_LAYERS + 1), clean,
                         replace(SETTINGS, freeze_embeddings=False), 0)

    retraining.train_head(model, clean, SETTINGS, seed=0)

    head_ids = {id(q) for m in head_modules(model) for q in m.parameters()}
    head = {name for name, q in model.named_parameters() if id(q) in head_ids}
    after = state(model)
    assert all(torch.equal(after[k], before[k]) for k in before if k not in head)
    assert any(not torch.equal(after[k], before[k]) for k in head)
    for k in after:
        assert torch.allclose(after[k], reference.state_dict()[k], atol=1e-6), k


class _Pair:
    """What a retraining trial reads of its pair (PairInputs), from in-memory models."""

    def __init__(self, memorised, pretrained):
        texts, self.labels, tokenizer = corpus()
        self.memorised, self._pretrained = memorised, pretrained
        self.data = Encoded(tokenizer, texts, None, self.labels, 32)
        self.noisy = np.arange(len(texts)) >= 32

    def pretrained(self):
        return self._pretrained


def test_a_start_layers_trial_retrains_its_windows_and_resumes_at_window_granularity(splits, tmp_path,
                                                                                      monkeypatch):
    from raymem.localise.retraining import Retraining, clean_split
    from raymem.runtime import Runtime
    from raymem.store import Store

    memorised, pretrained = pair("bert", splits[0].tokenizer)
    inputs = _Pair(memorised, pretrained)
    params = {"task": "t", "model": "m", "seed": 3, "pair": "", "start": 2, "n_layers": N_LAYERS,
              "retrain": {"epochs": 2, "lr": 1e-3, "batch_size": 8, "warmup": 0.0}}
    runtime = Runtime("cpu", "fp32", store=Store(str(tmp_path)), trial_id="trial")
    rows = Retraining().run(params, inputs, runtime)["retrain_windows"]
    # the windows of start layer 2, each as retraining that window alone gives it
    assert rows.select("window_start", "window_end").rows() == [(2, 2), (2, 3), (2, 4)]
    clean_train, held_out = clean_split(inputs.noisy, 3)
    noisy_data = inputs.data.subset(np.flatnonzero(inputs.noisy))
    held_data = inputs.data.subset(held_out)
    for start, end, acc, clean_acc in rows.select("window_start", "window_end", "noisy_acc", "clean_acc").rows():
        alone = retrain_window(memorised, pretrained, start, end, inputs.data.subset(clean_train),
                               replace(SETTINGS, warmup=0.0), seed=3)
        assert acc == pytest.approx((predict(alone, noisy_data).argmax(-1) == inputs.labels[inputs.noisy]).mean())
        # the held-out clean examples, never trained on: as many as the noisy ones
        assert clean_acc == pytest.approx((predict(alone, held_data).argmax(-1) == inputs.labels[held_out]).mean())
    assert len(held_out) == inputs.noisy.sum() and not set(held_out) & set(clean_train)
    # kept parts stay until the sweep has the trial's results and marker down
    assert Store(str(tmp_path)).exists("checkpoints", "trial", "parts")
    runtime.discard_progress()
    assert not Store(str(tmp_path)).exists("checkpoints", "trial", "parts")

    # an attempt that died after its first window: the rerun retrains the other two only
    runtime.keep_part("2-2", {"noisy_acc": 0.125, "clean_acc": 0.5})
    retrained = []
    real = retraining._retrain
    monkeypatch.setattr(retraining, "_retrain",
                        lambda working, pre, start, end, *a: retrained.append((start, end)) or real(
                            working, pre, start, end, *a))
    resumed = Retraining().run(params, inputs, runtime)["retrain_windows"]
    assert retrained == [(2, 3), (2, 4)]
    assert resumed["noisy_acc"].to_list() == [0.125, *rows["noisy_acc"].to_list()[1:]]
    assert resumed["clean_acc"].to_list() == [0.5, *rows["clean_acc"].to_list()[1:]]
    assert runtime.info["resumed_parts"] == 1


def test_retraining_keeps_the_pooler_frozen_and_warms_up_as_the_original(splits):
    from raymem.config import LocaliseConfig
    from raymem.localise.retraining import Retraining

    clean, _ = splits
    memorised, pretrained = pair("bert", clean.tokenizer)
    retrained = retrain_window(memorised, pretrained, 2, 3, clean, SETTINGS, seed=3)
    pooler = memorised.bert.pooler.state_dict()
    assert all(torch.equal(v, pooler[k]) for k, v in retrained.bert.pooler.state_dict().items())
    classifier = memorised.classifier.state_dict()  # the classifier trains
    assert not all(torch.equal(v, classifier[k]) for k, v in retrained.classifier.state_dict().items())
    assert Retraining().settings(LocaliseConfig())["warmup"] == 0.1


class _CountingScaler(torch.amp.GradScaler):
    """torch's CPU loss scaler, counting the losses it scaled."""

    def __init__(self):
        super().__init__("cpu", init_scale=2.0 ** 8)
        self.scaled = 0

    def scale(self, outputs):
        self.scaled += 1
        return super().scale(outputs)


@pytest.mark.parametrize("technique", ["retraining", "gradients"])
def test_fp16_windows_and_the_head_only_control_train_with_loss_scaling(technique, splits, monkeypatch):
    """Under fp16 every training loop scales its losses, with a fresh scaler from the
    runtime per window (and for the gradients' control model), so small gradients do not
    underflow to zero."""
    from raymem.localise.gradients import Gradients
    from raymem.localise.retraining import Retraining
    from raymem.runtime import Runtime

    memorised, pretrained = pair("bert", splits[0].tokenizer)
    inputs = _Pair(memorised, pretrained)
    runtime = Runtime("cpu", "fp16")
    scalers = []
    monkeypatch.setattr(runtime, "grad_scaler", lambda: scalers.append(_CountingScaler()) or scalers[-1])
    settings = {"epochs": 1, "lr": 1e-3, "batch_size": 8, "warmup": 0.0}
    params = {"task": "t", "model": "m", "seed": 3, "pair": "", "start": 3, "n_layers": N_LAYERS,
              "retrain": settings, "control_training": settings}
    tables = (Retraining() if technique == "retraining" else Gradients()).run(params, inputs, runtime)
    assert tables
    steps = -(-len(inputs.data) // 8)  # an epoch's steps at most (windows train on the clean ones only)
    assert len(scalers) == (2 if technique == "retraining" else 1)  # windows (3, 3), (3, 4); one control
    assert all(s.is_enabled() and 0 < s.scaled <= steps for s in scalers)


def test_training_under_fp16_autocast_without_a_loss_scaler_is_refused(splits):
    from raymem.runtime import Runtime

    clean, _ = splits
    memorised, pretrained = pair("bert", clean.tokenizer)
    with Runtime("cpu", "fp16").autocast(), pytest.raises(ValueError, match="needs a loss scaler"):
        retrain_window(memorised, pretrained, 2, 2, clean, SETTINGS, seed=3)
