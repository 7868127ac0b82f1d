"""Batches whose examples all have one length carry no attention mask (raymem.train.Encoded.batch).

transformers reads an attention mask's values on every forward to see whether it can skip
it (a host-device sync per batch on a GPU). A mask of all ones changes nothing, so where
every example of a batch has the same length, known on the host from the token counts,
the batch has none: the same logits, no sync for it. Batches with padding keep theirs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from raymem.localise.layers import pooled_hidden_states
from raymem.models import attention_mask, load_classifier, load_tokenizer, model_spec
from raymem.train import Encoded

MODEL = model_spec("raymem-mini")
SAME = ["the cat sat", "a dog ran", "the cat ran", "a dog sat"]  # one length each after tokenising


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return load_classifier(MODEL, 2, tokenizer.pad_token_id).eval()


def encoded(tokenizer, texts):
    return Encoded(tokenizer, texts, None, np.zeros(len(texts), dtype=int), 64)


@contextlib.contextmanager
def count_value_reads():
    """Count the calls that read a tensor's values on the host: on a GPU each is a sync."""
    counts = {"all": 0, "item": 0, "bool": 0}
    originals = {"all": torch.Tensor.all, "item": torch.Tensor.item, "bool": torch.Tensor.__bool__}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)
        return wrapper

    torch.Tensor.all, torch.Tensor.item, torch.Tensor.__bool__ = (
        counting("all"), counting("item"), counting("bool"))
    try:
        yield counts
    finally:
        torch.Tensor.all, torch.Tensor.item, torch.Tensor.__bool__ = (
            originals["all"], originals["item"], originals["bool"])


def test_equal_lengths_drop_the_mask_padded_batches_keep_it(tokenizer):
    same = encoded(tokenizer, SAME)
    assert len(set(same.lengths())) == 1, same.lengths()  # the texts are what this test needs
    with count_value_reads() as reads:  # decided from the host's token counts, no tensor read
        batch = same.batch([0, 1, 2, 3])
    assert sum(reads.values()) == 0, reads
    assert "attention_mask" not in batch and set(batch) >= {"input_ids", "labels"}
    assert torch.equal(attention_mask(batch), torch.ones_like(batch["input_ids"]))

    mixed = encoded(tokenizer, SAME + ["a much longer sentence than the others here"])
    padded = mixed.batch([0, 4])
    assert padded["attention_mask"].shape == padded["input_ids"].shape
    assert padded["attention_mask"][0].sum() < padded["attention_mask"][1].sum()  # row 0 is padded
    assert "attention_mask" not in mixed.batch([0, 1])  # a batch of equal ones, from a mixed split
    one = mixed.batch([4])  # a batch of one: nothing to pad either
    assert "attention_mask" not in one


def test_same_logits_and_hidden_states_with_and_without_the_mask(tokenizer, model):
    batch = encoded(tokenizer, SAME).batch([0, 1, 2, 3])
    labels = batch.pop("labels")
    ones = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, model(**ones).logits)
        assert torch.equal(pooled_hidden_states(model, {**batch, "labels": labels}),
                           pooled_hidden_states(model, {**ones, "labels": labels}))


def test_no_mask_means_fewer_host_reads_per_forward(tokenizer, model):
    batch = encoded(tokenizer, SAME).batch([0, 1, 2, 3])
    batch.pop("labels")
    ones = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
    with torch.inference_mode():
        with count_value_reads() as with_mask:
            model(**ones)
        with count_value_reads() as without:
            model(**batch)
    print(f"\nhost reads per forward: with an all-ones mask {with_mask}, without {without}")
    assert sum(with_mask.values()) >= 1  # transformers checks the mask's values
    assert sum(without.values()) < sum(with_mask.values())
