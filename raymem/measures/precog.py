"""PreCog: how much of an example the pre-trained masked-LM can reconstruct.

    PreCog@k(x) = mean over units u of x of 1[every token of u is in top_k(MLM(x with u masked))]

A unit is a subword token (default) or a whole word. Each example becomes one masked
copy per unit (`masking: single`) or `draws` copies with 15% of its units masked
(`masking: random15`). Copies of many examples are scored together in large batches
of equal-length copies (no padding); one forward pass serves every k (a token is in the
top k iff fewer than k logits beat it) and the pseudo-log-likelihood
`PLL(x) = mean log p(t | x with t masked)`. For BERT/RoBERTa layouts the last layer and
the MLM head run at the masked positions only (`bert_masked_logits`), the rest of the
arithmetic being the same as a full forward; other masked-LMs take the generic path.

The MLM head runs in fp32 whatever the body's precision: ranks compare logits, and bf16's
8-bit mantissa would round near-equal logits into ties, which count as hits (a token is in
the top k iff fewer than k logits beat it). The generic path's head runs inside the
model's own forward, in the autocast precision.

`PrecogScorer` is a callable class, so Ray Data can run it in an actor pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from raymem.models import (ModelSpec, check_masked_lm, fp32_head, load_masked_lm, load_tokenizer,
                           masked_position_logits, model_inputs)
from raymem.runtime import Runtime

# Long inputs get fewer copies per forward, so memory stays bounded (512 copies of a
# 512-token input would need gigabytes of activations).
TOKENS_PER_BATCH = 65536
EAGER_ATTENTION_BYTES = 2**28


@dataclass(frozen=True)
class PrecogSettings:
    ks: tuple[int, ...] = (1, 50)
    unit: str = "subword"  # "subword" | "word"
    masking: str = "single"  # "single" | "random15"
    draws: int = 5
    copies_per_batch: int = 512
    max_length: int = 512
    seed: int = 0


@dataclass
class Copy:
    example: int  # index into the batch of examples
    groups: list[list[int]]  # units masked together in this copy, as token positions


def units(word_ids: list[int | None], sequence_ids: list[int | None], unit: str) -> list[list[int]]:
    """Token positions of each unit of an example: real tokens only, no specials/padding."""
    real = [i for i, s in enumerate(sequence_ids) if s is not None]
    if unit == "subword":
        return [[i] for i in real]
    words: dict[tuple[int, int], list[int]] = {}
    for i in real:
        words.setdefault((sequence_ids[i], word_ids[i]), []).append(i)
    return list(words.values())


def masked_copies(example_units: list[list[list[int]]], s: PrecogSettings) -> list[Copy]:
    if s.masking == "single":
        return [Copy(e, [u]) for e, us in enumerate(example_units) for u in us]
    rng = np.random.default_rng(s.seed)
    copies = []
    for e, us in enumerate(example_units):
        n_masked = max(1, math.ceil(0.15 * len(us)))
        for _ in range(s.draws):
            chosen = rng.choice(len(us), size=n_masked, replace=False)
            copies.append(Copy(e, [us[i] for i in sorted(chosen)]))
    return copies


class PrecogScorer:
    """Scores a batch of examples: {example_id, text, text_pair} -> per-example scores."""

    def __init__(self, model: ModelSpec, settings: PrecogSettings, num_threads: int | None = None,
                 device: str = "auto", precision: str = "auto"):
        check_masked_lm(model)  # a decoder is a configuration error, before anything loads
        self.runtime = Runtime(device, precision, num_threads)
        self.settings = settings
        self.tokenizer = load_tokenizer(model)
        self.model = load_masked_lm(model).to(self.runtime.device)
        self.mask_id = self.tokenizer.mask_token_id
        self.bert_like = is_bert_like(self.model)  # the shortcut below; else the generic forward
        # load_tokenizer caps model_max_length at the model's positions and at what the
        # tokenizer declares (raymem-mini was pre-trained on 64 tokens).
        self.max_length = min(settings.max_length, self.tokenizer.model_max_length)
        # Short inputs: plain matmul-softmax attention beats the fused kernel on CPU (about
        # 10% end to end for raymem-mini) but keeps every attention weight: only when small.
        heads = getattr(self.model.config, "num_attention_heads", 64)
        if TOKENS_PER_BATCH * heads * self.max_length * 4 <= EAGER_ATTENTION_BYTES:
            self.model.set_attn_implementation("eager")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        pairs = [None if p is None or p != p else str(p) for p in batch["text_pair"]]  # NaN-safe
        scores = self.score(texts, None if all(p is None for p in pairs) else pairs)
        return {"example_id": np.asarray(batch["example_id"]), **scores,
                "device": np.full(len(texts), self.runtime.info["device"]),
                "precision": np.full(len(texts), self.runtime.info["precision"])}

    def encode(self, texts: list[str], pairs: list[str] | None):
        enc = self.tokenizer(*model_inputs(self.tokenizer, texts, pairs), truncation=True, max_length=self.max_length)
        ids = [torch.tensor(x) for x in enc["input_ids"]]
        types = [torch.tensor(x) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
        example_units = [units(enc.word_ids(i), enc.sequence_ids(i), self.settings.unit)
                         for i in range(len(texts))]
        return ids, types, example_units

    @torch.inference_mode()
    def score(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        s = self.settings
        ids, types, example_units = self.encode(texts, pairs)
        # Batches hold copies of one length only: no padding, so no compute is wasted on
        # it and no attention mask is needed (all copies of an example have its length).
        by_length: dict[int, list[Copy]] = {}
        for c in masked_copies(example_units, s):
            by_length.setdefault(len(ids[c.example]), []).append(c)
        n = len(texts)
        hits = {k: np.zeros(n) for k in s.ks}
        n_units, logp_sum, n_positions = np.zeros(n), np.zeros(n), np.zeros(n)
        for length, group in sorted(by_length.items()):
            size = min(s.copies_per_batch, max(1, TOKENS_PER_BATCH // length))
            for start in range(0, len(group), size):
                rank, logp, where = self._forward(group[start:start + size], ids, types)
                # A unit is recovered at k when its worst-ranked token is in the top k.
                n_groups = int(where[:, 1].max()) + 1
                group_rank = torch.zeros(n_groups, dtype=rank.dtype).scatter_reduce(
                    0, where[:, 1], rank, "amax", include_self=False)
                group_example = torch.zeros(n_groups, dtype=torch.long)
                group_example[where[:, 1]] = where[:, 0]
                ex = group_example.numpy()
                np.add.at(n_units, ex, 1)
                for k in s.ks:
                    np.add.at(hits[k], ex, (group_rank < k).numpy().astype(float))
                np.add.at(logp_sum, where[:, 0].numpy(), logp.numpy())
                np.add.at(n_positions, where[:, 0].numpy(), 1)
        denom = np.maximum(n_units, 1)
        out = {f"precog_at_{k}": hits[k] / denom for k in s.ks}
        out["pll"] = logp_sum / np.maximum(n_positions, 1)
        out["n_units"] = n_units.astype(np.int64)
        return out

    def _forward(self, chunk: list[Copy], ids, types):
        """(rank of each masked target, its log-prob, [example, group-in-chunk] per position).

        Every copy in `chunk` has the same length."""
        rows, cols, where = [], [], []
        group = 0
        for r, c in enumerate(chunk):
            for positions in c.groups:
                rows += [r] * len(positions)
                cols += positions
                where += [(c.example, group)] * len(positions)
                group += 1
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
        input_ids = torch.stack([ids[c.example] for c in chunk])
        targets = input_ids[rows_t, cols_t]
        input_ids[rows_t, cols_t] = self.mask_id
        inputs = {"input_ids": input_ids}
        if types is not None:
            inputs["token_type_ids"] = torch.stack([types[c.example] for c in chunk])
        inputs = self.runtime.to_device({**inputs, "rows": rows_t, "cols": cols_t, "targets": targets})
        rows_t, cols_t, targets = inputs.pop("rows"), inputs.pop("cols"), inputs.pop("targets")
        with self.runtime.autocast():
            if self.bert_like:
                logits = bert_masked_logits(self.model, rows_t, cols_t, **inputs)
            else:
                logits = masked_position_logits(self.model, rows_t, cols_t, **inputs)
        logits = logits.float()  # ranks and log-probabilities in fp32
        target_logit = logits.gather(1, targets[:, None])
        rank = (logits > target_logit).sum(-1).cpu()
        logp = (target_logit[:, 0] - torch.logsumexp(logits, -1)).cpu()
        return rank, logp, torch.tensor(where)


def is_bert_like(model) -> bool:
    """BERT/RoBERTa layout, the one `bert_masked_logits` knows how to shortcut."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if model.config.model_type not in ("bert", "roberta") or not layers or model.config.is_decoder:
        return False
    last = layers[-1]
    has_head = (getattr(model, "cls", None) or getattr(model, "lm_head", None)) is not None
    has_parts = all(hasattr(last, a) for a in ("attention", "intermediate", "output"))
    return has_head and has_parts and not getattr(last, "chunk_size_feed_forward", 0)


def bert_masked_logits(model, rows, cols, input_ids, token_type_ids=None):
    """MLM logits at (rows, cols) of unpadded inputs; the last layer runs at those positions only.

    Only the masked positions' final states are read, and in the last layer a position's
    output depends on the others only through their keys and values: so the last layer
    computes keys and values everywhere but queries, attention output, feed-forward and
    the MLM head at the masked positions alone: the full forward's arithmetic, less the
    part nobody reads (results agree to float rounding).
    """
    base = model.base_model
    *layers, last = base.encoder.layer
    hidden = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    for layer in layers:
        hidden = layer(hidden)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # transformers 4 returned tuples
    att = last.attention.self
    batch, length, _ = hidden.shape
    heads, size = att.num_attention_heads, att.attention_head_size
    key = att.key(hidden).view(batch, length, heads, size).transpose(1, 2)
    value = att.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    if len(rows) != batch or not torch.equal(rows, torch.arange(batch, device=rows.device)):
        key, value = key[rows], value[rows]  # several masked positions in one copy
    here = hidden[rows, cols]
    query = att.query(here).view(-1, heads, 1, size)
    context = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=att.scaling)
    attended = last.attention.output(context.reshape(len(rows), heads * size), here)
    final = last.output(last.intermediate(attended), attended)
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    return fp32_head(head, final)
