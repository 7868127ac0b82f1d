"""A study from start to end: validate and plan (no writes), then run the stages.

    plan:     study file -> tasks and models loaded and checked -> examples -> trial lists
    run:      examples -> precog (Ray Data actor pool) -> fine-tuning, subset and control models
              (one Ray Tune sweep) -> localisation (Ray Tune) -> ingest -> charts

Every bad input is found while planning, so it fails before any trial starts and
before anything is written. Every stage skips the trials a previous run finished.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from raymem.config import Study
from raymem.data import precog_rows, prepare_examples
from raymem.errors import ConfigError
from raymem.models import ModelSpec, check_masked_lm, check_model, layer_count, model_spec
from raymem.stages import control, counterfactual, finetune, localise
from raymem.store import Store, database_path, ingest
from raymem.sweep import make_trial, record_run, run_sweep
from raymem.tasks import load_task


@dataclass
class Plan:
    study: Study
    store: Store
    db_path: Path
    models: dict[str, ModelSpec]
    examples: dict[tuple[str, str], pl.DataFrame]
    examples_trials: dict[tuple[str, str], dict] = field(default_factory=dict)
    precog_trials: dict[tuple[str, str], dict] = field(default_factory=dict)
    finetune_trials: list[dict] = field(default_factory=list)
    # (task, model) -> (summary trial, its subset-model trials)
    counterfactual_trials: dict[tuple[str, str], tuple[dict, list[dict]]] = field(default_factory=dict)
    control_trials: list[dict] = field(default_factory=list)
    localise_pairs: list[localise.PairPlan] = field(default_factory=list)

    def trials(self) -> list[dict]:
        counterfactual = [t for summary, subsets in self.counterfactual_trials.values()
                          for t in (summary, *subsets)]
        pairs = [t for p in self.localise_pairs for t in (p.hidden, p.summary, *p.trials)]
        return [*self.examples_trials.values(), *self.precog_trials.values(), *self.finetune_trials,
                *counterfactual, *self.control_trials, *pairs]

    def n_trials(self) -> int:
        return len(self.trials())


def _examples_params(study: Study) -> dict:
    """What fixes a task's examples table besides the task and model."""
    params = {"data_seed": study.data_seed, "noise_ratio": study.noise_ratio,
              "subsample": dict(sorted(study.subsample.items()))}
    if study.train_min_annotator_confidence is not None:  # absent when unset: ids stay as they were
        params["train_min_annotator_confidence"] = study.train_min_annotator_confidence
    return params


def _examples_trial(study: Study, task: str, model: str, results: str) -> dict:
    return make_trial("examples", {"task": task, "model": model, **_examples_params(study)},
                      study.study, results)


def make_plan(study: Study, log=print) -> Plan:
    """Load and check everything the study needs; write nothing."""
    store = Store(study.results)
    db_path = database_path(store, study.database)
    models = {name: model_spec(name) for name in study.models}
    for spec in models.values():
        if study.precog.enabled:
            check_masked_lm(spec)
        check_model(spec)
    if study.finetune.enabled and "noisy" in study.finetune.variants and study.noise_ratio == 0:
        raise ConfigError("finetune.variants: 'noisy' needs noise_ratio above 0")
    examples, n_labels = {}, {}
    for task in study.tasks:
        spec, splits = load_task(task if isinstance(task, str) else task.model_dump())
        if study.finetune.enabled and study.eval_split not in splits:
            raise ConfigError(f"eval_split: task {spec.name} has no {study.eval_split!r} split "
                              f"(it has {sorted(splits)})")
        n_labels[spec.name] = len(spec.label_names)
        for name, mspec in models.items():
            examples[spec.name, name] = prepare_examples(study, spec, splits, mspec)
        log(f"[plan] task {spec.name}: " + ", ".join(
            f"{split} {n}" for split, n in examples[spec.name, study.models[0]]
            .group_by("split", maintain_order=True).len().iter_rows()))
    plan = Plan(study, store, db_path, models, examples)
    common = _examples_params(study)
    for (task, model) in examples:
        plan.examples_trials[task, model] = _examples_trial(study, task, model, store.uri)
        if study.precog.enabled:
            plan.precog_trials[task, model] = make_trial(
                "precog", {"task": task, "model": model, **common,
                           "precog": study.precog.model_dump(exclude={"actors", "enabled",
                                                                      "examples_per_batch"})},
                study.study, store.uri)
    ids = {key: t["trial_id"] for key, t in plan.examples_trials.items()}
    if study.finetune.enabled:
        plan.finetune_trials = finetune.plan(study, ids, n_labels, store.uri)
    if study.counterfactual.enabled:
        for key, subsets in counterfactual.plan(study, ids, n_labels, store.uri).items():
            summary = counterfactual.summary_trial(subsets, study.study, store.uri)
            plan.counterfactual_trials[key] = (summary, subsets)
    if study.localise.enabled:
        _plan_localisation(plan, ids, n_labels, log)
    return plan


def _plan_localisation(plan: Plan, examples_ids: dict, n_labels: dict[str, int], log) -> None:
    study, uri = plan.study, plan.store.uri
    if not study.finetune.enabled or set(study.finetune.variants) != {"clean", "noisy"}:
        raise ConfigError("localise: needs finetune enabled with variants [clean, noisy] "
                          "(the memorised model and its clean twin)")
    n_layers = {name: layer_count(spec) for name, spec in plan.models.items()}
    finetuned = {(t["params"]["task"], t["params"]["model"], t["params"]["seed"], t["params"]["variant"]):
                 t["trial_id"] for t in plan.finetune_trials}
    cfg = study.localise
    for (task, model), examples_trial in examples_ids.items():
        for seed in study.seeds:
            base = localise.pair_base(study, task, model, seed, finetuned[task, model, seed, "noisy"],
                                      finetuned[task, model, seed, "clean"], examples_trial, n_labels[task])
            plan.localise_pairs.append(localise.plan_pair(study.study, uri, base, n_layers[model], cfg))
    if not cfg.control.enabled:
        return
    aux_spec, aux_splits = load_task(cfg.control.auxiliary_task)
    aux_ids = {}
    for name, mspec in plan.models.items():
        key = (f"{aux_spec.name}", name)
        if key not in plan.examples:
            plan.examples[key] = prepare_examples(study, aux_spec, aux_splits, mspec)
            plan.examples_trials[key] = _examples_trial(study, aux_spec.name, name, uri)
        aux_ids[name] = plan.examples_trials[key]["trial_id"]
    plan.control_trials, pairs = control.plan(study, examples_ids, aux_ids, n_labels,
                                              len(aux_spec.label_names), n_layers, uri)
    for task, model, seed, pair, noisy, clean in pairs:
        base = localise.pair_base(study, task, model, seed, noisy["trial_id"], clean["trial_id"],
                                  examples_ids[task, model], n_labels[task], pair)
        plan.localise_pairs.append(localise.plan_pair(study.study, uri, base, n_layers[model], cfg, pair))
    log(f"[plan] control setup: {len(pairs)} planted pairs, {len(plan.control_trials)} control models")


def _run_localisation(plan: Plan, log) -> list[dict]:
    study, store = plan.study, plan.store
    ready = [p for p in plan.localise_pairs
             if store.is_done(p.base["memorised_trial"]) and store.is_done(p.base["clean_trial"])]
    needs_hidden = {"probing", "centroids"} & set(study.localise.techniques)
    missing = [p for p in ready if needs_hidden and not store.is_done(p.hidden["trial_id"])]
    if missing:
        log(f"[hidden] pooled hidden states of every layer for {len(missing)} checkpoints")
        start = time.time()
        localise.extract_hidden(store, missing, plan.examples, study.localise.actors)
        log(f"[hidden] done in {time.time() - start:.0f}s")
    # the single trials of a pair take longest: they go first, the many short windows after
    trials = sorted((t for p in ready for t in p.trials), key=lambda t: "window" in t["params"])
    failed = run_sweep("localise", trials, study.localise.resources, store,
                       study.finetune.max_failures, log)
    for pair in ready:
        if all(store.is_done(t["trial_id"]) for t in pair.trials):
            localise.summarise(store, pair)
    skipped = [p.summary for p in plan.localise_pairs if p not in ready]
    return failed + skipped


def _init_ray(study: Study) -> None:
    import ray

    if ray.is_initialized():
        return
    if study.ray.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=study.ray.address)  # a running cluster, e.g. under `ray job submit`
    else:
        # "local": a new Ray of our own, even where `ray start` left a cluster address behind
        ray.init(address="local", num_cpus=study.ray.num_cpus or os.cpu_count())


def run_plan(plan: Plan, log=print) -> list[dict]:
    """Run every stage; return the failed trials (empty when all went well)."""
    study, store = plan.study, plan.store
    store.check_writable()
    for key, trial in plan.examples_trials.items():
        if not store.is_done(trial["trial_id"]):
            store.write_rows("examples", "examples", trial["trial_id"], plan.examples[key], study.study)
            store.mark_done(trial["trial_id"], trial["params"])
    _init_ray(study)
    failed = []
    for (task, model), trial in plan.precog_trials.items():
        if store.is_done(trial["trial_id"]):
            log(f"[precog] {task} / {model}: already done")
            continue
        start = time.time()
        examples = plan.examples[task, model].filter(pl.col("split").is_in(study.precog.splits))
        log(f"[precog] {task} / {model}: scoring {examples.height} examples "
            f"({examples['n_tokens'].sum()} masked copies at most)")
        rows = precog_rows(examples, plan.models[model], study.precog).with_columns(
            pl.lit(task).alias("task"))
        store.write_rows("precog", "precog", trial["trial_id"], rows, study.study)
        record_run(store, trial, "ok", time.time() - start)
        store.mark_done(trial["trial_id"], trial["params"])
        log(f"[precog] {task} / {model}: done in {time.time() - start:.1f}s")
    # Fine-tuning, subset models and control models need only the examples: one sweep,
    # longest trials first (control models learn two tasks), so the cores stay busy.
    training = [*plan.control_trials, *plan.finetune_trials,
                *(t for _, ts in plan.counterfactual_trials.values() for t in ts)]
    if training:
        failed += run_sweep("training", training, study.finetune.resources, store,
                            study.finetune.max_failures, log)
    for summary, subsets in plan.counterfactual_trials.values():
        if all(store.is_done(t["trial_id"]) for t in subsets):
            counterfactual.aggregate(summary, subsets, store)
    if plan.localise_pairs:
        failed += _run_localisation(plan, log)
    # The database holds this study's trials only, not shards left by other settings.
    counts = ingest(store, plan.db_path, {t["trial_id"] for t in plan.trials()})
    log(f"[ingest] {plan.db_path}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return failed
