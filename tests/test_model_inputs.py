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


def opt_like_tokenizer(pair_template: str):
    """A GPT2TokenizerFast built offline from a tiny byte-level vocab and merges, with OPT's
    special tokens (<s> 0, <pad> 1, </s> 2, <unk> 3; BOS = EOS = </s>) and a pair template."""
    from transformers import GPT2TokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in sorted(set(bytes_to_unicode().values())):
        vocab.setdefault(char, len(vocab))
    merges = ["Ġ t", "h e", "Ġt he", "Ġ r", "i v", "e r"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                                  bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tokenizer.backend_tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="</s>:0 $A:0", pair=pair_template, special_tokens=[("</s>", 2)])
    tokenizer.sep_token = tokenizer.eos_token  # as load_tokenizer gives OPT (the original's)
    return tokenizer


def test_opts_pair_gets_its_separator_whatever_its_template():
    # GPT-2-family converters build OPT's pair template as `</s> $A $B`: nothing between them
    converted = opt_like_tokenizer("</s>:0 $A:0 $B:1")
    plain = converted("the river", "the money")["input_ids"]
    assert plain.count(2) == 1  # passed as a pair, the segments would run together
    texts, pairs = model_inputs(converted, ["the river"], ["the money"])
    assert (texts, pairs) == (["the river </s> the money"], None)
    ids = Encoded(converted, ["the river"], ["the money"], np.array([0]), 32).features[0]["input_ids"]
    assert ids == converted("the river </s> the money")["input_ids"]
    assert ids[0] == 2 and ids.count(2) == 2  # BOS, then the separator between the segments
    # a template that does put </s> between them keeps the pair as a pair
    separated = opt_like_tokenizer("</s>:0 $A:0 </s>:1 $B:1")
    assert model_inputs(separated, ["the river"], ["the money"]) == (["the river"], ["the money"])


def test_opts_head_reads_the_last_real_token_of_a_padded_row_and_has_no_bias():
    # The original set OPT's pad_token_id to its EOS (2), which is also the BOS at position 0, so
    # its head read the last position of the padded batch: a pad for every shorter row. raymem
    # keeps OPT's own pad id (1): a row's logits are the same padded in a batch or alone.
    import torch

    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                    ffn_dim=8, word_embed_proj_dim=8, max_position_embeddings=32, num_labels=3)
    model = transformers.OPTForSequenceClassification(config).eval()
    assert model.config.pad_token_id == 1 and model.score.bias is None  # HF's head: no bias (the original's had one)
    short, long = [2, 5, 6, 2, 7], [2, 5, 6, 2, 7, 8, 9, 10]
    batch = torch.tensor([short + [1] * 3, long])
    mask = (batch != 1).long()
    with torch.no_grad():
        batched = model(input_ids=batch, attention_mask=mask).logits
        alone = model(input_ids=torch.tensor([short]), attention_mask=torch.ones(1, 5, dtype=torch.long)).logits
    assert torch.allclose(batched[0], alone[0], atol=1e-5)
