"""A study from start to end: validate and plan (no writes), then run the stages.

    plan:     study file -> tasks and models loaded and checked -> examples -> one list of
              trials, each stage's `plan` adding its own (raymem/trial.py has the protocol)
    run:      examples -> search (a Tune experiment per task and model, optional) -> one Tune
              sweep of every other trial (fine-tuning, subset and control models, hidden states,
              localisation; summaries in the driver), each started when the trials it needs are
              done (raymem/schedule.py) -> ingest. PreCog (a Ray Data actor pool) runs beside.

Every bad input is found while planning, so it fails before any trial starts and
before anything is written. Every stage skips the trials a previous run finished.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import polars as pl

from raymem.config import Study
from raymem.data import prepare_examples, reserve_pool
from raymem.errors import ConfigError, is_disk_full
from raymem.lock import hold_study
from raymem.models import ModelSpec, check_masked_lm, check_model, layer_count, model_spec
from raymem.runtime import Runtime
from raymem.stages import control, counterfactual, examples as examples_stage, finetune, localise, neurons, precog, search
from raymem.store import Store, check_local_path, database_path, is_ingested
from raymem.sweep import error_kind, interruptible, record_run, run_sweep, storage_full, write_tables
from raymem.tasks import load_task
from raymem.terminal import RayOutput
from raymem.trackers import check_trackers
from raymem.trial import PlanContext, Trial

# Stages in the order they are planned and run (each may read what the ones before planned).
STAGES = (precog, search, finetune, counterfactual, control, localise, neurons)


@dataclass
class Plan:
    study: Study
    store: Store
    db_path: Path
    models: dict[str, ModelSpec]
    examples: dict[tuple[str, str], pl.DataFrame]
    trials: list[Trial]

    def of_stage(self, *stages: str) -> list[Trial]:
        return [t for t in self.trials if t.stage in stages]

    def n_trials(self) -> int:
        return len(self.trials)

    def up_to_date(self) -> bool:
        """Every trial is done and the database was built from exactly them: nothing to do."""
        ids = {t.trial_id for t in self.trials}
        return ids <= self.store.done_ids() and is_ingested(self.db_path, ids)


def _stage_enabled(study: Study, stage) -> bool:
    return {"precog": study.precog.enabled, "finetune": study.finetune.enabled,
            "search": study.search.enabled and study.finetune.enabled,
            "counterfactual": study.counterfactual.enabled, "localise": study.localise.enabled,
            "control": study.localise.enabled and study.localise.control.enabled,
            "neurons": study.neurons.enabled}[stage.STAGE]


def make_plan(study: Study, log=print) -> Plan:
    """Load and check everything the study needs; write nothing."""
    store = Store(study.results)
    db_path = database_path(store, study.database)
    check_local_path(db_path, "database", folder=False)
    store.check_reachable()  # object storage that does not answer: said now, not by the first listing
    check_trackers(study.trackers)  # a tracker's package missing: said now, not after PreCog
    models = {name: model_spec(name) for name in study.models}
    for spec in models.values():
        if study.precog.enabled:
            check_masked_lm(spec)
        check_model(spec)
    sources = {}
    for name, spec in models.items():  # two names of one checkpoint: the same trials twice
        if (other := sources.setdefault(spec.source, name)) != name:
            raise ConfigError(f"models: {other!r} and {name!r} are the same model ({spec.source})")
    if study.finetune.enabled and "noisy" in study.finetune.variants and study.noise_ratio == 0:
        raise ConfigError("finetune.variants: 'noisy' needs noise_ratio above 0")
    if study.localise.enabled and (not study.finetune.enabled
                                   or set(study.finetune.variants) != {"clean", "noisy"}):
        raise ConfigError("localise: needs finetune enabled with variants [clean, noisy] "
                          "(the memorised model and its clean twin)")
    tasks = [t if isinstance(t, str) else t.model_dump() for t in study.tasks]
    control_on = study.localise.enabled and study.localise.control.enabled
    auxiliary = study.localise.control.auxiliary_task
    if control_on and auxiliary not in study.task_names():
        tasks.append(auxiliary)  # the control setup's clean second task: examples only
    examples, n_labels, have_splits = {}, {}, set()
    for task in tasks:
        try:
            spec, splits = load_task(task)
        except ConfigError as exc:
            if task != auxiliary or not control_on:
                raise
            raise ConfigError(f"localise.control.auxiliary_task: {exc} (or a task of this study: "
                              f"{', '.join(study.task_names())})") from exc
        if study.finetune.enabled and spec.name in study.task_names() and study.eval_split not in splits:
            raise ConfigError(f"eval_split: task {spec.name} has no {study.eval_split!r} split "
                              f"(it has {sorted(splits)})")
        if spec.name in study.task_names():
            search.check_splits(study, spec.name, splits)
            missing = [s for s in study.precog.splits if s not in splits] if study.precog.enabled else []
            if missing:  # scored as nothing, silently
                raise ConfigError(f"precog.splits: task {spec.name} has no {missing[0]!r} split "
                                  f"(it has {sorted(splits)})")
            have_splits.update(splits)
        n_labels[spec.name] = len(spec.label_names)
        for name, mspec in models.items():
            examples[spec.name, name] = prepare_examples(study, spec, splits, mspec)
        if spec.name in study.task_names():
            log(f"[plan] task {spec.name}: " + ", ".join(
                f"{split} {n}" for split, n in examples[spec.name, study.models[0]]
                .group_by("split", maintain_order=True).len().iter_rows()))
    if unknown := sorted(set(study.subsample) - have_splits):  # one task without it is fine
        raise ConfigError(f"subsample: no task of this study has a {unknown[0]!r} split")
    if study.neurons.enabled and (not study.finetune.enabled or set(study.finetune.variants) != {"clean", "noisy"}):
        raise ConfigError("neurons: needs finetune enabled with variants [clean, noisy] "
                          "(the noisy model, and the clean model the planted units are fitted into)")
    n_layers = ({name: layer_count(spec) for name, spec in models.items()}
                if study.localise.enabled or study.neurons.enabled else {})
    trials = plan_trials(study, store.uri, n_labels, n_layers)
    if control_on:
        n_control = sum(t.stage == control.STAGE for t in trials)
        n_pairs = sum(t.stage == control.STAGE and t.params["variant"] == "noisy" for t in trials)
        log(f"[plan] control setup: {n_pairs} planted pairs, {n_control} control models")
    return Plan(study, store, db_path, models, examples, trials)


def plan_trials(study: Study, uri: str, n_labels: dict[str, int], n_layers: dict[str, int]) -> list[Trial]:
    """Every trial of the study, each after those it needs. The ids depend on the study's
    settings, the classes per task, the layers per model and the fingerprints of the task
    data and model files (their hashes: raymem/fingerprint.py), so `raymem plan` lists the
    same trials without loading anything."""
    context = PlanContext(uri, {(task, model): examples_stage.examples_trial(study, task, model, uri)
                                for task in n_labels for model in study.models}, n_labels, n_layers)
    context.trials += context.examples_trials.values()
    for stage in STAGES:
        if _stage_enabled(study, stage):
            context.trials += stage.plan(study, context)
    return context.trials


def _run_summary(store: Store, summary: Trial, by_id: dict[str, Trial], log) -> bool:
    """A counterfactual or localisation summary, in the driver, once its trials are done."""
    if summary.stage == localise.SUMMARY:
        compute = lambda _: localise.summarise(summary, [by_id[n] for n in summary.needs], store)  # noqa: E731
    else:
        compute = lambda _: counterfactual.aggregate(summary, store)  # noqa: E731
    try:
        _run_in_driver(store, summary, compute, record=False)
        return True
    except Exception as exc:  # the sweep goes on; the study ends naming it as failed
        if is_disk_full(exc):
            raise  # the study stops (raymem.sweep: disk_full)
        log(f"[{summary.stage}] {summary.label()}: failed: {type(exc).__name__}: {exc}")
        return False


def _run_search(store: Store, trial: Trial, done: bool, log) -> None:
    """One (task, model)'s search: a Tune experiment the driver starts; then its winner."""
    p, name = trial.params, f"[search] {trial.params['task']} / {trial.params['model']}"
    if not done:
        n = search.n_candidates(p)
        log(f"{name}: {n} candidates on the validation split, ASHA stopping the weaker ones early")

        def compute(info):
            runtime = Runtime("cpu", "fp32", None, store)  # the driver only drives; candidates run elsewhere
            tables = search.run(trial, runtime)
            info.update(runtime.info)
            return tables
        _run_in_driver(store, trial, compute)
    table = store.read_shard("search", search.STAGE, trial.trial_id)
    log(f"{name}: {'already done; ' if done else ''}{search.describe(table)}")


def _run_in_driver(store: Store, trial: Trial, compute, record: bool = True) -> None:
    """A driver-side step: its tables, its runs row (not for a summary) and its marker.
    `compute(info)` returns the tables and may note in `info` where it ran."""
    start, info = time.time(), {}
    shards = write_tables(store, trial, compute(info))
    if record:
        shards |= record_run(store, trial, "ok", time.time() - start, info)
    store.mark_done(trial.trial_id, trial.params, shards)


def _is_local(study: Study) -> bool:
    """Whether the study starts a Ray of its own: no address, or `local` (in the study
    file or RAY_ADDRESS), which asks Ray for a new local instance."""
    address = study.ray.address or os.environ.get("RAY_ADDRESS")
    return not address or address.strip().lower() == "local"


def _local_cpus(study: Study) -> int | None:
    """The CPUs of the local Ray the study starts; None when it runs on a cluster."""
    if not _is_local(study):
        return None
    return study.ray.num_cpus or os.cpu_count()


def _init_ray(study: Study) -> None:
    import ray

    from raymem.localcluster import init_local_ray

    if ray.is_initialized():
        return
    cpus = _local_cpus(study)
    if cpus is None:
        ray.init(address=study.ray.address)  # a running cluster, e.g. under `ray job submit`
    else:
        # "local": a new Ray of our own, even where `ray start` left a cluster address behind
        init_local_ray(num_cpus=cpus)


def _check_local_resources(study: Study) -> None:
    """A local Ray has its CPUs and no GPU it cannot see: a trial or PreCog's actor pool asking
    for more would wait forever, so say so now, before anything starts."""
    import torch

    cpus = _local_cpus(study)
    if cpus is None:
        return
    asked = {"finetune.resources": study.finetune.resources, "search.resources": study.search.resources,
             "precog.actors": study.precog.actors, "localise.resources": study.localise.resources,
             "localise.hidden_resources": study.localise.hidden_resources}
    if not torch.cuda.is_available():
        for where, hardware in asked.items():
            if hardware.gpus > 0:
                raise ConfigError(f"{where}.gpus: {hardware.gpus:g} GPU per trial asked for, but this machine "
                                  f"has no CUDA device and the study runs on a local Ray; set gpus: 0, or "
                                  f"submit the study to a cluster with GPU nodes (ray.address)")
    pool = study.precog.actors
    if study.precog.enabled and pool.max_size * pool.cpus > cpus:
        raise ConfigError(f"precog.actors: max_size {pool.max_size} x {pool.cpus:g} CPUs are held for the "
                          f"actor pool, more than this local Ray's {cpus} CPUs (ray.num_cpus); lower max_size "
                          f"or cpus")
    for where, hardware in asked.items():
        if hardware.cpus > cpus:
            raise ConfigError(f"{where}.cpus: {hardware.cpus:g} CPUs per trial asked for, more than this "
                              f"local Ray's {cpus} (ray.num_cpus)")


def _largest_asks(study: Study) -> dict[str, tuple[dict[str, float], int]]:
    """Per study field: one bundle the enabled stages ask for, and how many at once (PreCog's
    pool: all of them, in one placement group; a trial: one)."""
    stages = {"finetune.resources": study.finetune.enabled or study.counterfactual.enabled,
              "search.resources": study.search.enabled and study.finetune.enabled,
              "localise.resources": study.localise.enabled, "localise.hidden_resources": study.localise.enabled}
    asks = {}
    if study.precog.enabled:
        pool = study.precog.actors
        asks["precog.actors"] = ({"CPU": pool.cpus, "GPU": pool.gpus}, pool.max_size)
    for where, on in stages.items():
        if on:
            hardware = attrgetter(where)(study)
            asks[where] = ({"CPU": hardware.cpus, "GPU": hardware.gpus}, 1)
    return asks


def _check_capacity(study: Study, log) -> None:
    """Refuse a study whose placement group or trial this Ray can never hold (it would wait
    forever): before anything is written; on a cluster, once connected to it."""
    import torch

    from raymem import capacity

    cpus = _local_cpus(study)
    if cpus is not None:
        found = capacity.local(cpus, torch.cuda.device_count())
    else:
        _init_ray(study)
        found = capacity.of_running_cluster()
        if found is None:
            log("[plan] the cluster's autoscaler config is not readable here (RAYMEM_AUTOSCALING_CONFIG); "
                "what it can hold is not checked")
            return
    for note in found.notes:  # what made it unknowable: nothing is refused then
        log(f"[plan] what the cluster can hold is not checked: {note}")
    capacity.check(_largest_asks(study), found)


def _precog_holds_every_cpu(study: Study) -> str | None:
    """What to say when PreCog's pool, held until it is done, takes every CPU of a local Ray
    (allowed, but the sweep then waits for PreCog)."""
    pool, cpus = study.precog.actors, _local_cpus(study)
    if cpus is not None and pool.max_size * pool.cpus >= cpus:
        return (f"[precog] precog.actors: the pool holds all {cpus} CPUs of this local Ray until PreCog is "
                f"done, and the sweep's trials wait for it; a smaller max_size scores beside them")
    return None


def run_plan(plan: Plan, log=print, ray_log: Path | None = None) -> list[Trial]:
    """Run every stage; return the failed trials (empty when all went well). With `ray_log`,
    Ray's own output goes to that file instead of the terminal (raymem/terminal.py).

    Ctrl-C or SIGTERM raises StudyInterrupted: what finished stays finished, and running the
    same study again goes on from there."""
    study, store = plan.study, plan.store
    _check_local_resources(study)
    _check_capacity(study, log)
    store.check_writable()
    # one driver per study and per database: a second one is refused before it writes
    with hold_study(store, study.study, plan.db_path, log):
        done = store.done_ids()
        for trial in plan.of_stage(examples_stage.STAGE):
            if trial.trial_id not in done:
                key = (trial.params["task"], trial.params["model"])
                shards = store.write_rows("examples", "examples", trial.trial_id, plan.examples[key],
                                          study.study)
                store.mark_done(trial.trial_id, trial.params, shards)
        with RayOutput(ray_log) if ray_log else contextlib.nullcontext() as output:
            _init_ray(study)
            if output is not None:
                output.route()  # ray.init starts forwarding the workers' output
            with interruptible():
                return _run_stages(plan, log)


def _run_stages(plan: Plan, log) -> list[Trial]:
    study, store = plan.study, plan.store
    failed, done = [], store.done_ids()
    # PreCog feeds no other trial: its Ray Data job runs beside the searches and the sweep,
    # on the CPUs and GPUs held for its actors from before the sweep asks for any.
    pending = []
    for trial in plan.of_stage(precog.STAGE):
        if trial.trial_id in done:
            log(f"[precog] {trial.params['task']} / {trial.params['model']}: already done")
        else:
            pending.append(trial)
    reserved = reserve_pool(study.precog.actors) if pending else None
    if pending and (note := _precog_holds_every_cpu(study)):
        log(note)
    scoring = _Beside(lambda: _run_precog(plan, pending, reserved, log))
    for trial in plan.of_stage(search.STAGE):
        _run_search(store, trial, trial.trial_id in done, log)
    # Everything else is one Tune experiment: each trial starts when the trials it needs are
    # done (a pair's localisation when its two models are trained), longest chain first.
    flowing = [t for t in plan.trials if t.stage not in (examples_stage.STAGE, precog.STAGE, search.STAGE)]
    if flowing:
        by_id = {t.trial_id: t for t in plan.trials}
        failed += run_sweep("study", flowing, store, study.finetune.max_failures, log,
                            lambda summary: _run_summary(store, summary, by_id, log), trackers=study.trackers)
    failed += scoring.wait()
    # The database holds this study's trials only, not shards left by other settings.
    from raymem.analyses import build_database  # its checks and intervals load scipy: not at import

    counts = build_database(store, plan.db_path, {t.trial_id for t in plan.trials})
    log(f"[ingest] {plan.db_path}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return failed


class _Beside:
    """Run `work` in a thread of the driver; `wait()` joins it and returns what it returned,
    or raises what it raised."""

    def __init__(self, work):
        self.error: BaseException | None = None
        self.result = None

        def run():
            try:
                self.result = work()
            except BaseException as exc:  # handed to the main thread by wait()
                self.error = exc
        # a daemon: Ctrl-C ends the study without waiting for it (its shards are atomic)
        self.thread = threading.Thread(target=run, name="raymem-precog", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        while self.thread.is_alive():
            self.thread.join(timeout=0.5)  # short joins: Ctrl-C still reaches the main thread
        if self.error is not None:
            raise self.error
        return self.result


def _run_precog(plan: Plan, pending: list[Trial], reserved, log) -> list[Trial]:
    """Score the pending PreCog trials in the placement group `reserved`, then remove it;
    return those that failed. A failure is a trial's like any other: recorded in `runs`,
    named at the end, and the other trials and the ingest go on."""
    import ray
    from ray.util.placement_group import remove_placement_group

    failed = []
    try:
        try:
            _await_reservation(reserved, plan.study.precog.actors, log, plan.study.ray.placement_timeout_s)
        except Exception as exc:  # no pool: none of them can be scored
            for trial in pending:
                _precog_failed(plan.store, trial, exc, 0.0, log)
            return list(pending)
        for trial in pending:
            start = time.time()
            try:
                _run_precog_trial(plan, trial, reserved, log)
            except Exception as exc:
                _precog_failed(plan.store, trial, exc, time.time() - start, log)
                failed.append(trial)
    finally:
        if reserved is not None and ray.is_initialized():
            remove_placement_group(reserved)
    return failed


def _precog_failed(store: Store, trial: Trial, exc: Exception, wall: float, log) -> None:
    """Record a PreCog trial's failure, as the sweep records a trial's (a full store stops the study)."""
    import traceback

    if is_disk_full(exc):
        raise storage_full(store, exc) from exc
    # the first line: the whole error (a worker's traceback) is printed once, at the end
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    log(f"[precog] {trial.params['task']} / {trial.params['model']}: failed: {type(exc).__name__}: {first}")
    record_run(store, trial, "failed", wall, None, "".join(traceback.format_exception(exc, limit=8)),
               error_kind(exc))


def _await_reservation(reserved, pool, log, timeout_s: float, every_seconds: float = 60.0) -> None:
    """Wait until the placement group is placed (at once on a local Ray; on an autoscaling
    cluster once nodes for it are up), saying so while it waits, and no longer than
    `timeout_s` (ray.placement_timeout_s): then a TimeoutError says what it waited for and
    what the cluster has."""
    import ray

    if reserved is None:
        return
    start, ready = time.time(), reserved.ready()
    while not ray.wait([ready], timeout=max(0.0, min(every_seconds, start + timeout_s - time.time())))[0]:
        waited = time.time() - start
        have = ", ".join(f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU"))
        what = (f"the actor pool's placement group of {pool.max_size} x ({pool.cpus:g} CPU, {pool.gpus:g} GPU) "
                f"(precog.actors); the cluster has {have or 'no CPU or GPU'} now")
        if waited >= timeout_s:
            raise TimeoutError(f"waited {waited:.0f}s (ray.placement_timeout_s) for {what}")
        log(f"[precog] waiting {waited:.0f}s for {what}")


def _run_precog_trial(plan: Plan, trial: Trial, reserved, log) -> None:
    study, task, model = plan.study, trial.params["task"], trial.params["model"]
    examples = plan.examples[task, model]
    log(f"[precog] {task} / {model}: scoring the {', '.join(study.precog.splits)} split(s) "
        f"({examples.filter(pl.col('split').is_in(study.precog.splits))['n_tokens'].sum()} "
        f"masked copies at most)")
    start = time.time()
    _run_in_driver(plan.store, trial,
                   lambda info: precog.run(trial, examples, plan.models[model], study, info, reserved,
                                           restarts=_local_cpus(study) is None))  # a cluster's nodes can be lost
    log(f"[precog] {task} / {model}: done in {time.time() - start:.1f}s")
