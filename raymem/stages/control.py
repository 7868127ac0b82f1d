"""The control setup (Dankers & Titov, 2024): memorisation planted in a known pair of layers.

A model learns two tasks at once, as the original's regime: the noisy task through its
own head, where only the planted layer pair (and the head) may change from that task's
loss, and a clean auxiliary task through a second head that updates every layer; their
batches alternate in a shuffled order, each task with its own AdamW optimiser. The clean twin is
trained the same way on the clean labels. A localisation technique then finds the
planted pair or not: hit@1 when its top layer is in the pair (chance 2/L), hit@2 the
share of its top two layers in the pair (chance 2/L), as published; `pair_on_top`, both
planted layers above all others (chance 1/C(L,2)), is the stricter extra.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from raymem.errors import ConfigError
from raymem.localise.layers import body_layers, is_decoder_model, pool
from raymem.models import attention_mask, embedding_parameters
from raymem.runtime import Runtime, TrainingState
from raymem.stages import search
from raymem.settings import resolve_settings
from raymem.stages.common import runtime_options
from raymem.train import Encoded, TrainSettings, encode_split, macro_f1, make_optimiser, predict, train_split
from raymem.trial import PlanContext, Tables, Trial

STAGE = "control"
WHERE = "tune"


def default_pairs(n_layers: int) -> list[tuple[int, int]]:
    middle = n_layers // 2
    return sorted({(1, 2), (middle, middle + 1), (n_layers - 1, n_layers)})


def run(trial: Trial, runtime: Runtime) -> Tables:
    """Train the noisy (or clean) control model of a planted pair; keep its final checkpoint,
    and the noisy one's memorised checkpoint (the first epoch whose training macro-F1 reaches
    `memorised_f1`), which forgetting gradients read, as the original's main.py kept one for
    every model it trained and its gradient analysis read it."""
    p = trial.params
    s = TrainSettings(**resolve_settings(p["settings"], runtime.store))
    tokenizer = runtime.load_tokenizer(p["model"], s.max_length)
    train = train_split(runtime.store, p["examples_trial"])
    # "frozen": the noisy task with no layer of its own (the baseline of gradients and probing)
    task = encode_split(tokenizer, train, train["original_label" if p["variant"] == "clean" else "label"]
                        .to_numpy(), s.max_length)
    aux_train = train_split(runtime.store, p["auxiliary_examples_trial"])
    auxiliary = encode_split(tokenizer, aux_train, aux_train["original_label"].to_numpy(), s.max_length)
    generator = runtime.seed(p["seed"])
    model = runtime.load_classifier(p["model"], p["n_labels"], tokenizer.pad_token_id)
    aux_head = runtime.on_device(torch.nn.Linear(model.config.hidden_size, p["auxiliary_n_labels"]))
    kept = {"memorised_epoch": None}  # resumable: a restarted trial knows whether it kept one

    def after_epoch(epoch: int) -> None:
        if p["variant"] != "noisy" or kept["memorised_epoch"] is not None:
            return
        with runtime.autocast():
            predicted = predict(model, task).argmax(-1)
        if macro_f1(task.labels.numpy(), predicted, p["n_labels"]) >= p["memorised_f1"]:
            kept["memorised_epoch"] = epoch
            runtime.save_checkpoint(model, "memorised")

    train_two_tasks(model, aux_head, task, auxiliary, tuple(p["pair"]), s, p["auxiliary_lr"], generator, runtime,
                    after_epoch, kept)
    runtime.info["memorised_epoch"] = kept["memorised_epoch"]
    runtime.save_checkpoint(model, "final")
    runtime.finish_training()
    return {}


def train_two_tasks(model, aux_head, task: Encoded, auxiliary: Encoded, pair: tuple[int, int] | tuple[()],
                    s: TrainSettings, auxiliary_lr: float, generator: torch.Generator, runtime: Runtime,
                    after_epoch: Callable[[int], None] | None = None, extra: dict | None = None) -> None:
    """Train in place as the original (src/main.py `train`): each epoch, the task's batches
    and one pass over the auxiliary task's, shuffled together; each batch steps its own
    AdamW. The task's optimiser holds the planted pair, the head and the modules after the
    body (the layers outside the pair and the embeddings never change from its loss); the
    auxiliary task's holds everything but the embeddings, at `auxiliary_lr` with its own
    schedule. Gradients are clipped over every parameter, as the original. Not
    train.fine_tune's loop: two tasks, two optimisers. In fp16 one loss scaler serves both:
    a step whose gradients overflowed is skipped and the scale lowered, as torch's.
    `after_epoch(epoch)` runs after each epoch, before its progress is kept with `extra`."""
    for q in embedding_parameters(model):
        q.requires_grad_(False)
    start, end = pair if pair else (1, 0)  # no pair: the task's loss changes no layer
    outside = {id(q) for i, layer in enumerate(body_layers(model)) if not start - 1 <= i < end
               for q in layer.parameters()}
    trainable = [q for q in model.parameters() if q.requires_grad]
    main_params = [q for q in trainable if id(q) not in outside]
    every = trainable + list(aux_head.parameters())
    main_steps, aux_steps = math.ceil(len(task) / s.batch_size), math.ceil(len(auxiliary) / s.batch_size)
    optimiser, schedule = make_optimiser(main_params, s, s.epochs * main_steps)
    aux_optimiser, aux_schedule = make_optimiser(every, replace(s, lr=auxiliary_lr), s.epochs * aux_steps)
    scaler = runtime.grad_scaler()
    state = TrainingState({"model": model, "aux_head": aux_head, "optimiser": optimiser, "schedule": schedule,
                           "aux_optimiser": aux_optimiser, "aux_schedule": aux_schedule, "scaler": scaler},
                          generator, extra if extra is not None else {})
    decoder = is_decoder_model(model)
    for epoch in range(runtime.resume(state), s.epochs + 1):
        model.train()
        batches = ([(True, b) for b in task.batches(s.batch_size, generator, s.batch_order)]
                   + [(False, b) for b in auxiliary.batches(s.batch_size, generator, s.batch_order)])
        for i in torch.randperm(len(batches), generator=generator).tolist():
            is_main, batch = batches[i]
            batch = runtime.to_device(batch)
            labels = batch.pop("labels")
            with runtime.autocast():
                if is_main:
                    logits = model(**batch).logits
                else:
                    hidden = model.base_model(**batch).last_hidden_state
                    logits = aux_head(pool(hidden, attention_mask(batch), decoder))
            scaler.scale(F.cross_entropy(logits.float(), labels)).backward()
            # The optimisers share parameters: unscale through the auxiliary one alone, which
            # holds every trainable parameter, so each gradient is unscaled exactly once
            # (both would divide the shared ones twice) and the clip sees them all.
            scaler.unscale_(aux_optimiser)
            norm = torch.nn.utils.clip_grad_norm_(every, s.clip)
            if not is_main:
                scaler.step(aux_optimiser)  # skipped on an fp16 overflow
            elif not scaler.is_enabled() or torch.isfinite(norm):
                optimiser.step()  # its gradients were unscaled above; an fp16 overflow skips it
            scaler.update()
            (schedule if is_main else aux_schedule).step()
            for each in (optimiser, aux_optimiser):
                each.zero_grad(set_to_none=True)
        runtime.report(epoch=epoch)
        if after_epoch is not None:
            after_epoch(epoch)
        runtime.save_progress(state, epoch)
    model.eval()


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


def frozen_model_planned(study) -> bool:
    """Whether the frozen control model is trained: asked for, and some technique reads it."""
    from raymem.localise.registry import technique

    cfg = study.localise
    return cfg.control.frozen_model and any(technique(t).reads_control_model(cfg) for t in cfg.techniques)


def models_of(pairs, frozen: bool) -> list[tuple[str, list[int]]]:
    """(variant, planted pair) of a seed's control models: noisy and clean per pair, then the
    frozen model (no pair) where it is planned."""
    return [(variant, list(pair)) for pair in pairs for variant in ("noisy", "clean")] + \
        ([("frozen", [])] if frozen else [])


def plan(study, context: PlanContext) -> list[Trial]:
    """Per (task, model, seed, planted pair) a noisy and a clean control model, in that order;
    per (task, model, seed) a "frozen" one (no planted pair: the noisy task trains the head
    alone while the auxiliary task moves every layer), the original's baseline of the control
    setup (`freeze=embeddings-0-..-11`): forgetting gradients divide by it
    (visualise_gradients.py) and probing scores layer 1 against it (visualise_probing.ipynb)."""
    cfg, ft = study.localise.control, study.finetune
    auxiliary_n_labels = context.n_labels[cfg.auxiliary_task]
    own = ft.model_dump(include={"epochs", "lr", "batch_size", "max_length", "warmup",
                                 "clip", "weight_decay", "freeze_embeddings", "batch_order"})
    own["epochs"] = cfg.epochs or own["epochs"]
    trials, frozen = [], frozen_model_planned(study)
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
            trials += [Trial(STAGE, {
                "task": task, "model": model, "seed": seed, "variant": variant, "pair": pair,
                "n_labels": context.n_labels[task], "examples_trial": examples.trial_id,
                "auxiliary_examples_trial": auxiliary.trial_id,
                "auxiliary_n_labels": auxiliary_n_labels, "auxiliary_lr": cfg.auxiliary_lr,
                "settings": settings, "memorised_f1": ft.memorised_f1},
                study.study, context.results, (examples.trial_id, auxiliary.trial_id, *searched),
                runtime_options(ft.resources, ft.checkpoint_every))
                for variant, pair in models_of(cfg.pairs or default_pairs(layers), frozen)]
    return trials
