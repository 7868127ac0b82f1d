"""The control setup (Dankers & Titov, 2024): memorisation planted in a known pair of layers.

A model learns two tasks at once: the noisy task through its own head, where only the
planted layer pair (and the head) may change from that task's loss, and a clean
auxiliary task through a second head that updates every layer. The clean twin is
trained the same way on the clean labels. A localisation technique then finds the
planted pair or not: hit@1 when its top layer is in the pair (chance 2/L), hit@2 the
share of its top two layers in the pair (chance 2/L), as published; `pair_on_top`, both
planted layers above all others (chance 1/C(L,2)), is the stricter extra.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from raymem.errors import ConfigError
from raymem.localise.layers import body_layers, is_decoder_model, pool
from raymem.models import embedding_parameters
from raymem.runtime import Runtime, TrainingState
from raymem.stages import search
from raymem.stages.common import encode_split, runtime_options, train_split
from raymem.train import TrainSettings, make_optimiser
from raymem.trial import PlanContext, Tables, Trial

STAGE = "control"
WHERE = "tune"


def default_pairs(n_layers: int) -> list[tuple[int, int]]:
    middle = n_layers // 2
    return sorted({(1, 2), (middle, middle + 1), (n_layers - 1, n_layers)})


def run(trial: Trial, runtime: Runtime) -> Tables:
    """Train the two-task model. Its loop is not train.fine_tune's: each step takes a batch
    of both tasks, and between their backward passes the noisy task's gradient is removed
    from the body layers outside the planted pair."""
    p = trial.params
    s = TrainSettings(**search.resolve(p["settings"], runtime.store))
    tokenizer = runtime.load_tokenizer(p["model"], s.max_length)
    train = train_split(runtime.store, p["examples_trial"])
    task = encode_split(tokenizer, train, train["label" if p["variant"] == "noisy" else "original_label"]
                        .to_numpy(), s.max_length)
    aux_train = train_split(runtime.store, p["auxiliary_examples_trial"])
    auxiliary = encode_split(tokenizer, aux_train, aux_train["original_label"].to_numpy(), s.max_length)
    generator = runtime.seed(p["seed"])
    model = runtime.load_classifier(p["model"], p["n_labels"], tokenizer.pad_token_id)
    aux_head = runtime.on_device(torch.nn.Linear(model.config.hidden_size, p["auxiliary_n_labels"]))
    for q in embedding_parameters(model):
        q.requires_grad_(False)
    start, end = p["pair"]
    planted = {id(q) for layer in body_layers(model)[start - 1:end] for q in layer.parameters()}
    # body layers outside the pair: the noisy task's gradient is removed from them
    outside = [q for layer in body_layers(model) for q in layer.parameters() if id(q) not in planted]
    params = [q for q in model.parameters() if q.requires_grad] + list(aux_head.parameters())
    steps_per_epoch = math.ceil(len(task) / s.batch_size)
    optimiser, schedule = make_optimiser(params, s, s.epochs * steps_per_epoch)
    scaler = runtime.grad_scaler()
    state = TrainingState({"model": model, "aux_head": aux_head, "optimiser": optimiser,
                           "schedule": schedule, "scaler": scaler}, generator)
    decoder = is_decoder_model(model)
    for epoch in range(runtime.resume(state), s.epochs + 1):
        model.train()
        aux_batches = itertools.cycle(list(auxiliary.batches(s.batch_size, generator)))
        for batch in task.batches(s.batch_size, generator):
            batch = runtime.to_device(batch)
            labels = batch.pop("labels")
            with runtime.autocast():
                logits = model(**batch).logits
            scaler.scale(F.cross_entropy(logits.float(), labels)).backward()
            for q in outside:
                q.grad = None
            aux = runtime.to_device(next(aux_batches))
            aux_labels = aux.pop("labels")
            with runtime.autocast():
                hidden = model.base_model(**aux).last_hidden_state
                aux_logits = aux_head(pool(hidden, aux["attention_mask"], decoder))
            scaler.scale(F.cross_entropy(aux_logits.float(), aux_labels)).backward()
            scaler.unscale_(optimiser)
            torch.nn.utils.clip_grad_norm_(params, s.clip)
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
        runtime.report(epoch=epoch)
        runtime.save_progress(state, epoch)
    model.eval()
    runtime.save_checkpoint(model, "final")
    runtime.finish_training()
    return {}


def accuracy_rows(layer_scores: pl.DataFrame, pair: tuple[int, int], n_layers: int) -> pl.DataFrame:
    """One row per technique: did its top layers land in the planted pair? As published
    (Dankers & Titov, 2024):

        hit_at_1   its top layer lies in the pair                      chance 2/L
        hit_at_2   the share of its top two layers that lie in the pair  chance 2/L

    and, stricter, pair_on_top: both planted layers above every other (chance 1/C(L,2)).
    Ties earn nothing: a layer is in the top k only if fewer than k other layers score at
    least as much, and hit@1 needs every layer sharing the top score to be in the pair. So a
    technique that placed nothing (all scores 0) finds no pair, rather than the first
    layers by index.
    """
    rows = []
    for (technique,), scores in layer_scores.sort("layer").group_by(["technique"], maintain_order=True):
        score = scores["score"].to_numpy()
        order = np.argsort(-score, kind="stable") + 1  # layers, best first
        planted = np.isin(np.arange(1, len(score) + 1), pair)
        top = np.flatnonzero(score == score.max()) + 1
        rivals = np.array([(score >= s).sum() - 1 for s in score])  # layers scoring at least as much
        rows.append({"technique": technique, "planted_start": pair[0], "planted_end": pair[1],
                     "top_layers": f"{order[0]},{order[1]}",
                     "hit_at_1": bool(np.isin(top, pair).all()),
                     "hit_at_2": float((rivals[planted] < 2).sum() / 2),
                     "pair_on_top": bool(score[planted].min() > score[~planted].max(initial=-np.inf)),
                     "chance_at_1": 2 / n_layers, "chance_at_2": 2 / n_layers,
                     "chance_pair_on_top": 1 / math.comb(n_layers, 2)})
    return pl.DataFrame(rows)


def plan(study, context: PlanContext) -> list[Trial]:
    """Per (task, model, seed, planted pair) a noisy and a clean control model, in that order."""
    cfg, ft = study.localise.control, study.finetune
    auxiliary_n_labels = context.n_labels[cfg.auxiliary_task]
    own = ft.model_dump(include={"epochs", "lr", "batch_size", "max_length", "warmup",
                                 "clip", "weight_decay", "freeze_embeddings"})
    own["epochs"] = cfg.epochs or own["epochs"]
    trials = []
    for task, model in ((t, m) for t in study.task_names() for m in study.models):
        if task == cfg.auxiliary_task:
            continue
        examples = context.examples_trials[task, model]
        layers = context.n_layers[model]
        for a, b in cfg.pairs or default_pairs(layers):
            if not (1 <= a and b <= layers):
                raise ConfigError(f"localise.control.pairs: [{a}, {b}] is outside model {model} "
                                  f"(layers 1..{layers})")
        auxiliary = context.examples_trials[cfg.auxiliary_task, model]
        settings, searched = search.with_search(own, context, task, model, ("epochs",) if cfg.epochs else ())
        for seed in study.seeds:
            for pair in [tuple(p) for p in cfg.pairs or default_pairs(layers)]:
                trials += [Trial(STAGE, {
                    "task": task, "model": model, "seed": seed, "variant": variant, "pair": list(pair),
                    "n_labels": context.n_labels[task], "examples_trial": examples.trial_id,
                    "auxiliary_examples_trial": auxiliary.trial_id,
                    "auxiliary_n_labels": auxiliary_n_labels, "settings": settings},
                    study.study, context.results, (examples.trial_id, auxiliary.trial_id, *searched),
                    runtime_options(ft.resources, ft.checkpoint_every))
                    for variant in ("noisy", "clean")]
    return trials
