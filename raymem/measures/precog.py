"""PreCog: how much of an example the pre-trained masked-LM can reconstruct.

    PreCog@k(x) = mean over units u of x of 1[every token of u is in top_k(MLM(x with u masked))]

A unit is a subword token (default) or a whole word. Each example becomes one masked
copy per unit (`masking: single`) or `draws` copies with 15% of its units masked
(`masking: random15`). Copies of many examples are scored together in large batches;
one forward pass serves every k (a token is in the top k iff fewer than k logits beat
it) and the pseudo-log-likelihood `PLL(x) = mean log p(t | x with t masked)`.

`PrecogScorer` is a callable class, so Ray Data can run it in an actor pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from raymem.models import ModelSpec, check_masked_lm, load_masked_lm, load_tokenizer, masked_position_logits


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

    def __init__(self, model: ModelSpec, settings: PrecogSettings, num_threads: int | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
        check_masked_lm(model)  # a decoder is a configuration error, before anything loads
        self.settings = settings
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model)
        self.model = load_masked_lm(model).to(self.device)
        self.mask_id = self.tokenizer.mask_token_id
        # Never longer than the model has positions for (a longer input crashes the forward)
        # nor than the tokenizer declares (raymem-mini was pre-trained on 64 tokens).
        self.max_length = min(settings.max_length, self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", None) or 10**9)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        pairs = [None if p is None or p != p else str(p) for p in batch["text_pair"]]  # NaN-safe
        scores = self.score(texts, None if all(p is None for p in pairs) else pairs)
        return {"example_id": np.asarray(batch["example_id"]), **scores}

    def encode(self, texts: list[str], pairs: list[str] | None):
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        ids = [torch.tensor(x) for x in enc["input_ids"]]
        types = [torch.tensor(x) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
        example_units = [units(enc.word_ids(i), enc.sequence_ids(i), self.settings.unit)
                         for i in range(len(texts))]
        return ids, types, example_units

    @torch.inference_mode()
    def score(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        s = self.settings
        ids, types, example_units = self.encode(texts, pairs)
        copies = masked_copies(example_units, s)
        # Copies of similar length share a batch, so little compute goes to padding.
        copies.sort(key=lambda c: len(ids[c.example]))
        n = len(texts)
        hits = {k: np.zeros(n) for k in s.ks}
        n_units, logp_sum, n_positions = np.zeros(n), np.zeros(n), np.zeros(n)
        for start in range(0, len(copies), s.copies_per_batch):
            chunk = copies[start:start + s.copies_per_batch]
            rank, logp, where = self._forward(chunk, ids, types)
            # A unit is recovered at k when its worst-ranked token is in the top k.
            group_rank = torch.zeros(int(where[:, 1].max()) + 1, dtype=rank.dtype)
            group_rank = group_rank.scatter_reduce(0, where[:, 1], rank, "amax", include_self=False)
            group_example = torch.zeros_like(group_rank)
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
        """(rank of each masked target, its log-prob, [example, group-in-chunk] per position)."""
        width = max(len(ids[c.example]) for c in chunk)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        token_types = torch.zeros((len(chunk), width), dtype=torch.long) if types else None
        rows, cols, where = [], [], []
        group = 0
        for r, c in enumerate(chunk):
            length = len(ids[c.example])
            input_ids[r, :length] = ids[c.example]
            attention[r, :length] = 1
            if token_types is not None:
                token_types[r, :length] = types[c.example]
            for positions in c.groups:
                for p in positions:
                    rows.append(r)
                    cols.append(p)
                    where.append((c.example, group))
                group += 1
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
        targets = input_ids[rows_t, cols_t].clone()
        input_ids[rows_t, cols_t] = self.mask_id
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if token_types is not None:
            inputs["token_type_ids"] = token_types
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        logits = masked_position_logits(self.model, rows_t.to(self.device), cols_t.to(self.device),
                                        **inputs).float()
        target_logit = logits.gather(1, targets.to(self.device)[:, None])
        rank = (logits > target_logit).sum(-1).cpu()
        logp = (target_logit[:, 0] - torch.logsumexp(logits, -1)).cpu()
        return rank, logp, torch.tensor(where)
