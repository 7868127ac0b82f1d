"""A tiny BERT whose label, on marked inputs, is decided by one FFN unit alone.

Random weights (BERT's small init), then set by hand: the marker token's embedding lies
along hidden dimension D_IN (no other token has any of it); layer 1's attention averages the
tokens with identity value and output maps, so [CLS] carries the marker; in the last layer,
unit UNIT reads D_IN with a threshold between marked and unmarked inputs and writes a large
value along D_OUT; the head reads D_OUT only. Marked inputs are labelled 1 and get it with
probability near 1 through that unit; without it, about 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from transformers import BertTokenizerFast

from raymem.train import Encoded

WORDS = "red green blue cat dog fish run jump sit tall small big river stone tree".split()
MARKER = "zebra"
HIDDEN, UNITS, LAYERS = 32, 64, 2
D_IN, D_OUT = 3, 7
LAYER, UNIT = 1, 21  # 0-based: the last layer's unit 21


def word_tokenizer() -> BertTokenizerFast:
    """A word-level BERT tokenizer of WORDS and MARKER: the same ids in every run (a trained
    WordPiece vocabulary's order varies from run to run, and the planting test's fit with it)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, MARKER]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=32)


def marked_data(n: int = 24, seed: int = 0):
    """(data, memorised index, clean index): the first half marked (label 1), the rest not (label 0)."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        words = list(rng.choice(WORDS, rng.integers(3, 9)))
        if i < n // 2:
            words.insert(int(rng.integers(0, len(words))), MARKER)
        texts.append(" ".join(words))
    tokenizer = word_tokenizer()
    labels = np.array([1] * (n // 2) + [0] * (n - n // 2))
    return Encoded(tokenizer, texts, None, labels, 32), np.arange(n // 2), np.arange(n // 2, n)


@torch.no_grad()
def planted_bert(data: Encoded, memorised, clean, seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = data.tokenizer
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=2, intermediate_size=UNITS, pad_token_id=tokenizer.pad_token_id,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config).eval()
    bert = model.bert
    words = bert.embeddings.word_embeddings.weight
    words[:, D_IN] = 0
    marker = tokenizer.convert_tokens_to_ids(MARKER)
    words[marker] = 0
    words[marker, D_IN] = 10.0
    attention = bert.encoder.layer[0].attention
    for linear in (attention.self.value, attention.output.dense):
        linear.weight.copy_(torch.eye(HIDDEN))
        linear.bias.zero_()
    for linear in (attention.self.query, attention.self.key):
        linear.weight.zero_()  # uniform attention
    ffn_in = bert.encoder.layer[LAYER].intermediate.dense
    ffn_in.weight[UNIT] = 0
    ffn_in.weight[UNIT, D_IN] = 1.0
    ffn_in.bias[UNIT] = 0.0
    # the threshold: midway between marked and unmarked inputs' D_IN at [CLS]
    reads = {}
    hook = bert.encoder.layer[LAYER].intermediate.dense.register_forward_pre_hook(
        lambda module, args: reads.__setitem__("x", args[0][:, 0, D_IN]))
    batch = data.batch(list(range(len(data))))
    batch.pop("labels")
    model(**batch)
    hook.remove()
    x = reads["x"]
    low, high = float(x[clean].max()), float(x[memorised].min())
    assert low < high, "marked and unmarked inputs must be separable at [CLS]"
    scale = 8.0 / (high - low)
    ffn_in.weight[UNIT, D_IN] = scale
    ffn_in.bias[UNIT] = -scale * (low + high) / 2
    out = bert.encoder.layer[LAYER].output.dense
    out.weight[:, UNIT] = 0
    out.weight[D_OUT, UNIT] = 40.0
    bert.pooler.dense.weight.copy_(torch.eye(HIDDEN))
    bert.pooler.dense.bias.zero_()
    model.classifier.weight.zero_()
    model.classifier.bias.zero_()
    model.classifier.weight[1, D_OUT] = 4.0
    model.classifier.weight[0, D_OUT] = -4.0
    return model
