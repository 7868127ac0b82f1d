"""Inputs as the original code formats them: WiC's target word before its two sentences,
and a separator between a decoder's pair texts."""

import numpy as np
import polars as pl
import pytest
import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast

from raymem.models import load_tokenizer, model_inputs, model_spec
from raymem.tasks import REGISTRY, _fields_frame
from raymem.train import Encoded

WORDS = ["</s>", "|", "bank", "river", "money", "the", "flows", "holds", "a", "b"]


def decoder(tmp_path, config) -> str:
    """A tiny word-level decoder checkpoint with no pad or sep token, as GPT-Neo ships."""
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="</s>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    return str(tmp_path)


def test_wic_gives_the_word_then_both_sentences_each_after_a_separator():
    wic = REGISTRY["wic"]
    frame = _fields_frame(pl.DataFrame({"word": ["bank"], "sentence1": ["the river bank"],
                                        "sentence2": ["the bank holds money"], "label": [0]}), wic)
    tokenizer = load_tokenizer(model_spec("raymem-mini"))
    data = Encoded(tokenizer, frame["text"].to_list(), frame["text_pair"].to_list(), np.array([0]), 64)
    tokens = tokenizer.convert_ids_to_tokens(data.features[0]["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 3
    text = tokenizer.convert_tokens_to_string(tokens)
    assert text.replace(" ", "") == "[CLS]bank[SEP]theriverbank[SEP]thebankholdsmoney[SEP]"


@pytest.mark.parametrize("config, separator", [
    (transformers.GPTNeoConfig(vocab_size=len(WORDS), hidden_size=8, num_layers=1, num_heads=1,
                               attention_types=[[["global"], 1]], max_position_embeddings=32), "|"),
    (transformers.OPTConfig(vocab_size=len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            ffn_dim=8, word_embed_proj_dim=8, max_position_embeddings=32), "</s>")])
def test_a_decoders_pair_is_joined_around_its_separator(tmp_path, config, separator):
    tokenizer = load_tokenizer(model_spec(decoder(tmp_path, config)))
    assert tokenizer.sep_token == separator  # the original: EOS for OPT, "|" for GPT-Neo and Pythia
    texts, pairs = model_inputs(tokenizer, ["the river"], ["money flows"])
    assert (texts, pairs) == ([f"the river {separator} money flows"], None)
    data = Encoded(tokenizer, ["the river"], ["money flows"], np.array([1]), 32)
    ids = data.features[0]["input_ids"]
    assert ids == tokenizer(f"the river {separator} money flows")["input_ids"]
    assert tokenizer.convert_tokens_to_ids(separator) in ids
    # WiC's three parts: word | sentence1 | sentence2
    texts, _ = model_inputs(tokenizer, ["bank"], ["the river\x1fthe bank"])
    assert texts == [f"bank {separator} the river {separator} the bank"]


def test_single_texts_are_left_alone():
    tokenizer = load_tokenizer(model_spec("raymem-mini"))
    assert model_inputs(tokenizer, ["a", "b"], [None, None]) == (["a", "b"], None)
    assert model_inputs(tokenizer, ["a"], None) == (["a"], None)
