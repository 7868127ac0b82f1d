"""Forgetting gradients: batched per-example gradients, the loss, and the layer scores."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from raymem.localise.gradients import (METHODS, forgetting_gradient_scores, layer_gradient_differences,
                                       layer_parameter_names, matched_clean_index, mean_gradients,
                                       negative_training_loss, per_example_gradients,
                                       per_example_gradients_loop)
from raymem.localise.layers import body_layers
from raymem.pretrain import train_tokenizer
from raymem.train import Encoded

N_CLASSES = 3
WORDS = "the cat sat on a mat dog ran far away big small red blue green quick slow".split()


@pytest.fixture(scope="module")
def data() -> Encoded:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(2, 10))) for _ in range(24)]
    tokenizer = train_tokenizer(texts, vocab_size=60, max_length=32)
    return Encoded(tokenizer, texts, None, rng.integers(0, N_CLASSES, len(texts)), max_length=32)


def tiny_model(kind: str, vocab_size: int, pad_token_id: int, layers: int = 3, seed: int = 0):
    common = dict(vocab_size=vocab_size, hidden_size=32, num_attention_heads=2, pad_token_id=pad_token_id,
                  num_labels=N_CLASSES, max_position_embeddings=64)
    if kind == "bert":
        config = transformers.BertConfig(num_hidden_layers=layers, intermediate_size=64, **common)
    elif kind == "opt":
        config = transformers.OPTConfig(num_hidden_layers=layers, ffn_dim=64, word_embed_proj_dim=32,
                                        bos_token_id=2, eos_token_id=2, **common)
    elif kind == "gpt_neo":
        config = transformers.GPTNeoConfig(num_layers=layers, num_heads=2, window_size=4,
                                           attention_types=[[["global", "local"], 1], [["global"], 1]],
                                           bos_token_id=2, eos_token_id=2,
                                           **{k: v for k, v in common.items() if k != "num_attention_heads"})
    elif kind == "gpt2":  # its layers are transformers' Conv1D, not Linear
        config = transformers.GPT2Config(n_embd=32, n_layer=layers, n_head=2, n_positions=64,
                                         num_labels=N_CLASSES, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                         bos_token_id=2, eos_token_id=2)
    else:
        config = transformers.GPTNeoXConfig(num_hidden_layers=layers, intermediate_size=64,
                                            bos_token_id=2, eos_token_id=2, **common)
    torch.manual_seed(seed)
    return transformers.AutoModelForSequenceClassification.from_config(config)


def model_for(kind: str, data: Encoded, layers: int = 3, seed: int = 0):
    return tiny_model(kind, len(data.tokenizer), data.tokenizer.pad_token_id, layers, seed)


def test_loss_is_log_softmax_cross_entropy():
    logits = torch.randn(5, 4) * 3
    labels = torch.tensor([0, 3, 1, 1, 2])
    expected = -F.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(negative_training_loss(logits, labels), expected)
    # NLL on raw logits (the original bug) is a different number
    assert not torch.allclose(negative_training_loss(logits, labels), logits.gather(1, labels[:, None]).squeeze(1))


@pytest.mark.parametrize("kind", ["bert", "opt", "gpt_neo", "gpt_neox", "gpt2"])
def test_batched_per_example_gradients_equal_the_loop(kind, data):
    model = model_for(kind, data)
    implementation = model.config._attn_implementation
    batch = data.batch(list(range(8)))  # padded: lengths differ
    assert (batch["attention_mask"] == 0).any()
    batched = per_example_gradients(model, batch)
    looped = per_example_gradients_loop(model, batch)
    assert batched.keys() == looped.keys() and len(batched) > 0
    for name in looped:
        assert batched[name].shape == (8, *dict(model.named_parameters())[name].shape)
        assert torch.allclose(batched[name], looped[name], rtol=1e-4, atol=1e-6), name
    assert any(g.abs().max() > 0 for g in looped.values())
    assert model.training and model.config._attn_implementation == implementation  # both restored


@pytest.mark.parametrize("kind", ["bert", "gpt_neox"])
def test_gradient_is_of_the_negative_cross_entropy_of_the_model(kind, data):
    """Against the model's own loss (HF CrossEntropyLoss), computed with plain autograd."""
    model = model_for(kind, data).eval()
    batch = data.batch([3])
    per_example = per_example_gradients(model, batch)
    model.zero_grad()
    model(**batch).loss.backward()
    for name, p in model.named_parameters():
        if name in per_example:
            assert torch.allclose(per_example[name][0], -p.grad, rtol=1e-4, atol=1e-7), name


def test_mean_gradients_agree_across_methods(data):
    model = model_for("opt", data)
    means = {m: mean_gradients(model, data, range(13), batch_size=5, method=m) for m in METHODS}
    for name in means["loop"]:
        assert torch.allclose(means["mean"][name], means["loop"][name], rtol=1e-4, atol=1e-7)
        assert torch.allclose(means["per_example"][name], means["loop"][name], rtol=1e-4, atol=1e-7)


def test_layer_parameter_names_cover_each_layer(data):
    model = model_for("bert", data, layers=4)
    names = layer_parameter_names(model)
    assert len(names) == 4
    for k, layer_names in enumerate(names):
        assert all(f"encoder.layer.{k}." in n for n in layer_names)
        assert len(layer_names) == len(list(body_layers(model)[k].parameters()))


def make_identity_layer(layer) -> None:
    """Zero a pre-LN GPT-NeoX layer's output projections: with a parallel residual it becomes x -> x."""
    for module in (layer.attention.dense, layer.mlp.dense_4h_to_h):
        torch.nn.init.zeros_(module.weight)
        torch.nn.init.zeros_(module.bias)


def test_the_only_layer_that_differs_from_the_control_scores_highest(data):
    """Control and memorised model share everything but layer k's inner weights.

    Layer k is an identity in both (zero output projections), so every other layer sees
    the same activations and upstream gradients in both models: its ratio is exactly 1.
    Inside layer k, scaling the value weights scales the attention output projection's
    gradient, so only layer k's ratio rises above 1.
    """
    k = 2  # 1-based
    control = model_for("gpt_neox", data, layers=4).eval()
    make_identity_layer(body_layers(control)[k - 1])
    memorised = model_for("gpt_neox", data, layers=4).eval()
    memorised.load_state_dict(control.state_dict())
    with torch.no_grad():
        body_layers(memorised)[k - 1].attention.query_key_value.weight.mul_(5.0)

    noisy_mask = np.zeros(len(data), dtype=bool)
    noisy_mask[[1, 4, 7, 9, 15, 20]] = True
    noisy, clean = np.flatnonzero(noisy_mask), matched_clean_index(noisy_mask, seed=1)
    assert len(clean) == len(noisy) and not noisy_mask[clean].any()

    ratio = (layer_gradient_differences(memorised, data, noisy, clean)
             / layer_gradient_differences(control, data, noisy, clean))
    others = np.delete(ratio, k - 1)
    assert np.allclose(others, 1.0, rtol=1e-4)
    assert ratio[k - 1] > 1.5

    scores = forgetting_gradient_scores(memorised, control, data, noisy, clean, batch_size=4)
    assert scores.shape == (4,)
    assert scores.sum() == pytest.approx(1.0)
    assert int(np.argmax(scores)) == k - 1
    assert np.allclose(np.delete(scores, k - 1), scores[0 if k != 1 else 1])


def test_scores_sum_to_one_for_an_encoder(data):
    model, control = model_for("bert", data), model_for("bert", data, seed=1)
    scores = forgetting_gradient_scores(model, control, data, [0, 1, 2, 3], [4, 5, 6, 7],
                                        method="per_example")
    assert scores.shape == (3,) and np.all(scores > 0) and scores.sum() == pytest.approx(1.0)


def test_per_example_gradients_refuse_a_parameter_they_cannot_split(data):
    model = model_for("bert", data)
    layer = body_layers(model)[0]
    layer.scale = torch.nn.Parameter(torch.ones(1))  # owned by the layer itself, not a Linear
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.0\.scale belongs to a BertLayer"):
        per_example_gradients(model, data.batch([0, 1]))


def test_the_head_only_control_model_gets_the_tokenizers_pad_token(tmp_path):
    # a decoder whose config has no pad token (GPT-Neo style): the control model of
    # forgetting gradients must take padded batches like every other model
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    from raymem.localise.technique import PairInputs
    from raymem.runtime import Runtime

    words = ["</s>", "good", "bad", "film", "plot", "very"]
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="</s>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(tmp_path)
    config = transformers.GPT2Config(vocab_size=len(words), n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                     pad_token_id=None)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)  # pre-trained weights to start from
    pair = PairInputs({"model": str(tmp_path), "n_labels": 2, "seed": 1, "max_length": 16}, Runtime("cpu"))
    control = pair.pretrained()
    assert control.config.pad_token_id == 0  # the tokenizer's pad token: its eos
    batch = pair.tokenizer(["good film", "very very bad plot"], padding=True, return_tensors="pt")
    assert control(**batch).logits.shape == (2, 2)  # a padded batch of two runs


def test_gradient_variants(data):
    """L2 instead of L1, the noisy mean alone, and no control normalisation, each checked
    against its own arithmetic."""
    model, control = model_for("bert", data), model_for("bert", data, seed=1)
    noisy, clean = [0, 1, 2, 3], [4, 5, 6, 7]
    names = layer_parameter_names(model)
    mean_noisy = mean_gradients(model, data, noisy)
    mean_clean = mean_gradients(model, data, clean)
    l2 = np.array([sum(float(((mean_noisy[n] - mean_clean[n]) ** 2).sum()) for n in layer) ** 0.5
                   for layer in names])
    np.testing.assert_allclose(layer_gradient_differences(model, data, noisy, clean, norm="l2"), l2, rtol=1e-5)
    alone = np.array([sum(float(mean_noisy[n].abs().sum()) for n in layer) for layer in names])
    np.testing.assert_allclose(layer_gradient_differences(model, data, noisy, clean, subtract_clean=False),
                               alone, rtol=1e-5)
    l1 = layer_gradient_differences(model, data, noisy, clean)
    np.testing.assert_allclose(forgetting_gradient_scores(model, None, data, noisy, clean), l1 / l1.sum(),
                               rtol=1e-6)
    published = forgetting_gradient_scores(model, control, data, noisy, clean)
    assert not np.allclose(published, l1 / l1.sum())  # the control normalisation changes the scores
    with pytest.raises(ValueError, match="norm must be one of"):
        layer_gradient_differences(model, data, noisy, clean, norm="l3")


def test_gradient_variants_enter_only_their_own_trial_ids():
    from raymem.config import LocaliseConfig
    from raymem.localise.registry import technique

    gradients = technique("gradients")
    assert gradients.settings(LocaliseConfig()) == {}  # the published measure: ids as before
    assert gradients.settings(LocaliseConfig(gradient_norm="l2", gradient_control=False)) == {
        "gradient_norm": "l2", "gradient_control": False}
    assert technique("swapping").settings(LocaliseConfig(gradient_norm="l2")) == {}


def test_the_originals_raw_logit_nll_is_a_setting_differentiating_the_labels_logit(data):
    """src/gradient_analysis.py: `-NLLLoss()(outputs.logits, labels)`, i.e. the label's raw logit."""
    logits = torch.randn(5, 4) * 3
    labels = torch.tensor([0, 3, 1, 1, 2])
    assert torch.equal(negative_training_loss(logits, labels, "raw_logit_nll"),
                       -F.nll_loss(logits, labels, reduction="none"))
    with pytest.raises(ValueError, match="loss must be one of"):
        negative_training_loss(logits, labels, "nll")
    model = model_for("bert", data).eval()
    batch = data.batch([3, 5])
    per_example = per_example_gradients(model, batch, loss="raw_logit_nll")
    looped = per_example_gradients_loop(model, batch, loss="raw_logit_nll")
    model.zero_grad()
    model(**{k: v for k, v in batch.items() if k != "labels"}).logits.gather(
        1, batch["labels"][:, None]).sum().backward()
    for name, p in model.named_parameters():
        if name in per_example:
            assert torch.allclose(per_example[name].sum(0), p.grad, rtol=1e-4, atol=1e-7), name
            assert torch.allclose(looped[name], per_example[name], rtol=1e-4, atol=1e-6), name
    noisy, clean = [0, 1, 2, 3], [4, 5, 6, 7]
    published = layer_gradient_differences(model, data, noisy, clean, loss="raw_logit_nll")
    assert not np.allclose(published, layer_gradient_differences(model, data, noisy, clean))


def test_the_gradient_loss_setting_enters_the_trial_id_only_off_its_default():
    from raymem.config import LocaliseConfig
    from raymem.localise.registry import technique

    gradients = technique("gradients")
    assert LocaliseConfig().gradient_loss == "log_softmax"
    assert gradients.settings(LocaliseConfig(gradient_loss="raw_logit_nll")) == {"gradient_loss": "raw_logit_nll"}


def test_a_control_pair_is_divided_by_its_frozen_control_model(monkeypatch, data):
    """visualise_gradients.py: the control models' gradients over the auxiliary-trained model
    whose every layer was frozen for the noisy task, not a head-only one."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from raymem.localise import gradients

    frozen = model_for("bert", data, seed=1)
    seen = {}

    def scores(model, control, *args, **kwargs):
        seen["control"] = control
        return np.full(3, 1 / 3)

    monkeypatch.setattr(gradients, "forgetting_gradient_scores", scores)
    loaded = []
    runtime = SimpleNamespace(autocast=nullcontext,
                              load_checkpoint=lambda trial, names: loaded.append((trial, names)) or frozen)
    pair = SimpleNamespace(memorised=model_for("bert", data), data=data, noisy=np.arange(len(data)) % 4 == 0,
                           pretrained=lambda: pytest.fail("a control pair trains no head-only model"))
    p = {"task": "t", "model": "m", "seed": 1, "pair": "1-2", "control_model_trial": "control-frozen"}
    gradients.Gradients().run(p, pair, runtime)
    assert seen["control"] is frozen and loaded == [("control-frozen", ("final",))]
