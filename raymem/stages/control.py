"""The control setup (RESEARCH.md 3): memorisation planted in a known pair of layers.

A model learns two tasks at once: the noisy task through its own head, where only the
planted layer pair (and the head) may change from that task's loss, and a clean
auxiliary task through a second head that updates every layer. The clean twin is
trained the same way on the clean labels. A localisation technique then finds the
planted pair or not: hit@1 when its top layer is in the pair (chance 2/L), hit@2 when
its top two layers are the pair (chance 1/C(L,2)).
"""

from __future__ import annotations

import itertools
import math
import tempfile

import numpy as np
import polars as pl
import torch

from raymem.errors import ConfigError
from raymem.localise.layers import body_layers, is_decoder_model, pool
from raymem.models import embedding_parameters, load_classifier, load_tokenizer, model_spec
from raymem.store import Store
from raymem.sweep import make_trial
from raymem.train import Encoded, TrainSettings, make_optimiser

STAGE = "control"


def default_pairs(n_layers: int) -> list[tuple[int, int]]:
    middle = n_layers // 2
    return sorted({(1, 2), (middle, middle + 1), (n_layers - 1, n_layers)})


def _encoded(store: Store, examples_trial: str, label_column: str, tokenizer, max_length: int):
    examples = store.read_shard("examples", "examples", examples_trial)
    train = examples.filter(pl.col("split") == "train").sort("example_id")
    return Encoded(tokenizer, train["text"].to_list(), train["text_pair"].to_list(),
                   train[label_column].to_numpy(), max_length)


def run_trial(trial: dict, store: Store, report) -> dict:
    p = trial["params"]
    s = TrainSettings(**p["settings"])
    spec = model_spec(p["model"])
    tokenizer = load_tokenizer(spec, s.max_length)
    task = _encoded(store, p["examples_trial"], "label" if p["variant"] == "noisy" else "original_label",
                    tokenizer, s.max_length)
    auxiliary = _encoded(store, p["auxiliary_examples_trial"], "original_label", tokenizer, s.max_length)
    torch.manual_seed(p["seed"])
    model = load_classifier(spec, p["n_labels"], tokenizer.pad_token_id)
    aux_head = torch.nn.Linear(model.config.hidden_size, p["auxiliary_n_labels"])
    for q in embedding_parameters(model):
        q.requires_grad_(False)
    start, end = p["pair"]
    planted = {id(q) for layer in body_layers(model)[start - 1:end] for q in layer.parameters()}
    # body layers outside the pair: the noisy task's gradient is removed from them
    outside = [q for layer in body_layers(model) for q in layer.parameters() if id(q) not in planted]
    params = [q for q in model.parameters() if q.requires_grad] + list(aux_head.parameters())
    steps_per_epoch = math.ceil(len(task) / s.batch_size)
    optimiser, schedule = make_optimiser(params, s, s.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(p["seed"])
    decoder = is_decoder_model(model)
    model.train()
    for epoch in range(1, s.epochs + 1):
        aux_batches = itertools.cycle(list(auxiliary.batches(s.batch_size, generator)))
        for batch in task.batches(s.batch_size, generator):
            model(**batch).loss.backward()
            for q in outside:
                q.grad = None
            aux = next(aux_batches)
            labels = aux.pop("labels")
            hidden = model.base_model(**aux).last_hidden_state
            logits = aux_head(pool(hidden, aux["attention_mask"], decoder))
            torch.nn.functional.cross_entropy(logits, labels).backward()
            torch.nn.utils.clip_grad_norm_(params, s.clip)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
        report(epoch=epoch)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        size = store.put_dir(tmp, "checkpoints", trial["trial_id"], "final")
    return {"device": "cpu", "storage_bytes": size}


def accuracy_rows(layer_scores: pl.DataFrame, pair: tuple[int, int], n_layers: int) -> pl.DataFrame:
    """One row per technique: did its top layer(s) land in the planted pair?

    Ties earn nothing: hit@1 needs every layer sharing the top score to be in the pair,
    hit@2 needs both planted layers to score above every other layer. So a technique that
    placed nothing (all scores 0) finds no pair, rather than the first layers by index.
    """
    rows = []
    for (technique,), scores in layer_scores.sort("layer").group_by(["technique"], maintain_order=True):
        score = scores["score"].to_numpy()
        order = np.argsort(-score, kind="stable") + 1  # layers, best first
        planted = np.isin(np.arange(1, len(score) + 1), pair)
        top = np.flatnonzero(score == score.max()) + 1
        rows.append({"technique": technique, "planted_start": pair[0], "planted_end": pair[1],
                     "top_layers": f"{order[0]},{order[1]}",
                     "hit_at_1": bool(np.isin(top, pair).all()),
                     "hit_at_2": bool(score[planted].min() > score[~planted].max(initial=-np.inf)),
                     "chance_at_1": 2 / n_layers, "chance_at_2": 1 / math.comb(n_layers, 2)})
    return pl.DataFrame(rows)


def plan(study, examples_trials: dict, auxiliary_trials: dict, n_labels: dict[str, int],
         auxiliary_n_labels: int, n_layers: dict[str, int], results: str):
    """Control training trials, and per planted pair its (noisy, clean) trials.

    Returns (trials, [(task, model, seed, pair, noisy_trial, clean_trial), ...]).
    """
    cfg = study.localise.control
    settings = study.finetune.model_dump(include={"epochs", "lr", "batch_size", "max_length", "warmup",
                                                  "clip", "weight_decay", "freeze_embeddings"})
    settings["epochs"] = cfg.epochs or settings["epochs"]
    trials, pairs = [], []
    for (task, model), examples_trial in examples_trials.items():
        if task == cfg.auxiliary_task:
            continue
        layers = n_layers[model]
        for a, b in cfg.pairs or default_pairs(layers):
            if not (1 <= a and b <= layers):
                raise ConfigError(f"localise.control.pairs: [{a}, {b}] is outside model {model} "
                                  f"(layers 1..{layers})")
        for seed in study.seeds:
            for pair in [tuple(p) for p in cfg.pairs or default_pairs(layers)]:
                made = {variant: make_trial(STAGE, {
                    "task": task, "model": model, "seed": seed, "variant": variant, "pair": list(pair),
                    "n_labels": n_labels[task], "examples_trial": examples_trial,
                    "auxiliary_examples_trial": auxiliary_trials[model],
                    "auxiliary_n_labels": auxiliary_n_labels, "settings": settings}, study.study, results)
                    for variant in ("noisy", "clean")}
                trials += made.values()
                pairs.append((task, model, seed, pair, made["noisy"], made["clean"]))
    return trials, pairs
