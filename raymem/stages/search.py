"""The search stage: training settings chosen per (task, model) on the validation split.

One search trial per (task, model) runs a Ray Tune search of its own over `search.space`
(Tune's variant generator: the grid, or `samples` random combinations) with Tune's ASHA
scheduler. Every candidate first trains a noisy model on the perturbed labels, to learn
whether it reaches the memorised checkpoint (training macro-F1 >= `memorised_f1`) within
its epochs: the constraint. It then trains a clean model and reports the clean validation
accuracy (or macro-F1) after every epoch; ASHA stops the weaker candidates early on it.
The objective is that metric, less 1 where the constraint fails, so a candidate that meets
it always ranks above one that does not.

The winner is the best candidate that ran all its epochs (the first in the space's order
on a tie). Every candidate lands in the `search` table. Later training trials name the
search trial in their settings, so its id (a hash of the space, the data and the fixed
settings) enters theirs, and read the winner's settings when they run.
"""

from __future__ import annotations

import math
import time

import numpy as np
import polars as pl

from raymem.config import Study
from raymem.errors import ConfigError
from raymem.runtime import Runtime
from raymem.settings import SEARCH_STAGE, SEARCHED, deferred_settings
from raymem.stages.common import runtime_options
from raymem.store import Store
from raymem.train import TrainSettings, encode_split, fine_tune, macro_f1, predict
from raymem.trial import PlanContext, Tables, Trial

STAGE = SEARCH_STAGE
WHERE = "driver"  # the trial itself is a Tune search: its candidates are Tune's trials
FIXED = ("max_length", "warmup", "clip", "weight_decay", "freeze_embeddings", "memorised_f1", "batch_order")


def plan(study: Study, context: PlanContext) -> list[Trial]:
    """One search trial per (task, model)."""
    cfg = study.search
    trials = []
    for task in study.task_names():
        for model in study.models:
            examples = context.examples_trials[task, model]
            params = {"task": task, "model": model, "seed": study.seeds[0], "n_labels": context.n_labels[task],
                      "examples_trial": examples.trial_id, "space": cfg.space.model_dump(),
                      "algorithm": cfg.algorithm, "metric": cfg.metric, "grace_period": cfg.grace_period,
                      "reduction_factor": cfg.reduction_factor,
                      "settings": study.finetune.model_dump(include=set(FIXED))}
            if cfg.algorithm == "random":
                params |= {"samples": cfg.samples, "search_seed": cfg.seed}
            trials.append(Trial(STAGE, params, study.study, context.results, (examples.trial_id,),
                                {**runtime_options(cfg.resources), "concurrent": cfg.concurrent}))
    return trials


def check_splits(study: Study, task: str, splits: dict) -> None:
    if study.search.enabled and "validation" not in splits:
        raise ConfigError(f"search: task {task} has no validation split to choose settings on "
                          f"(it has {sorted(splits)}); add one, or set search.enabled: false")


# -- what later stages record and read --------------------------------------------------
def with_search(settings: dict, context: PlanContext, task: str, model: str,
                keep: tuple[str, ...] = ()) -> tuple[dict, tuple[str, ...]]:
    """A training trial's settings and the trials it then needs: where the study searches,
    the searched keys give way to the search trial's id (its winner is read when the trial
    runs), but for those in `keep`, which the stage sets itself (counterfactual.epochs)."""
    found = [t for t in context.of_stage(STAGE) if (t.params["task"], t.params["model"]) == (task, model)]
    if not found:
        return settings, ()
    return deferred_settings(settings, found[0].trial_id, keep), (found[0].trial_id,)


def n_candidates(p: dict) -> int:
    return p["samples"] if p["algorithm"] == "random" else math.prod(len(p["space"][k]) for k in SEARCHED)


def describe(table: pl.DataFrame) -> str:
    """One line: what the search chose, on what evidence, at what cost."""
    w = table.filter("winner").row(0, named=True)
    constraint = (f"its noisy model memorised at epoch {w['memorised_epoch']}" if w["constraint_met"] else
                  "WARNING: no candidate's noisy model reached finetune.memorised_f1 within its epochs; "
                  "add larger epochs or lr values to search.space")
    return (f"chose lr={w['lr']:g}, epochs={w['epochs']}, batch_size={w['batch_size']} (validation "
            f"{w['metric']} {w['validation']:.3f}; {constraint}); {len(table)} candidates, "
            f"{table.filter(~pl.col('completed')).height} stopped early")


# -- one search trial -----------------------------------------------------------------
def run(trial: Trial, runtime: Runtime) -> Tables:
    """Run the search as one Tune experiment; return the `search` rows."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raymem.sweep import tune_callbacks

    p, options = trial.params, trial.runtime
    space = p["space"]
    if p["algorithm"] == "grid":
        param_space, samples, generator = {k: tune.grid_search(space[k]) for k in SEARCHED}, 1, None
    else:
        param_space, samples = {k: tune.choice(space[k]) for k in SEARCHED}, p["samples"]
        generator = p["search_seed"]
    callbacks = tune_callbacks(f"search {p['task']} / {p['model']}", n_candidates(p))  # before Tune starts
    trainable = tune.with_resources(tune.with_parameters(_candidate, spec=trial),
                                    {"cpu": options.get("cpus", 1), "gpu": options.get("gpus", 0)})
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="objective", mode="max", num_samples=samples,
            search_alg=BasicVariantGenerator(random_state=generator, max_concurrent=options.get("concurrent", 1)),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=max(space["epochs"]),
                                    grace_period=p["grace_period"], reduction_factor=p["reduction_factor"])),
        run_config=tune.RunConfig(name=trial.trial_id, storage_path=runtime.store.local_path("tune"), verbose=0,
                                  callbacks=callbacks))
    start = time.time()
    results = tuner.fit()
    rows = []
    for candidate, result in enumerate(results):  # in the order Tune generated them
        last, settings = result.metrics or {}, {k: result.config[k] for k in SEARCHED}
        rows.append({"candidate": candidate, **settings, "metric": p["metric"],
                     "epochs_run": last.get("epoch", 0),
                     "completed": result.error is None and last.get("epoch") == settings["epochs"],
                     "validation": last.get("validation"), "memorised_epoch": last.get("memorised_epoch"),
                     "objective": last.get("objective"),
                     "error": None if result.error is None else str(result.error).strip().splitlines()[-1]})
    runtime.info["search_seconds"] = round(time.time() - start, 1)
    table = choose_winner(pl.DataFrame(rows, schema_overrides={
        "memorised_epoch": pl.Int64, "validation": pl.Float64, "objective": pl.Float64, "error": pl.Utf8}),
        f"{p['task']} / {p['model']}")
    return {"search": table.with_columns(task=pl.lit(p["task"]), model=pl.lit(p["model"]))}


def choose_winner(table: pl.DataFrame, name: str) -> pl.DataFrame:
    """Mark the winner: the highest objective among candidates that ran all their epochs
    (ASHA stopped the others), the first candidate on a tie."""
    ranked = table.filter("completed").sort(["objective", "candidate"], descending=[True, False])
    if ranked.is_empty():
        errors = table["error"].drop_nulls()
        raise RuntimeError(f"search {name}: no candidate ran to its end" + (f" ({errors[0]})" if len(errors) else ""))
    return table.with_columns(winner=pl.col("candidate") == ranked["candidate"][0],
                              constraint_met=pl.col("memorised_epoch").is_not_null())


def _candidate(config: dict, spec: Trial) -> None:
    """One Tune trial of the search: the noisy model (the constraint), then the clean one."""
    from ray import tune

    p, options = spec.params, spec.runtime
    runtime = Runtime(options.get("device", "auto"), options.get("precision", "auto"),
                      max(1, int(options.get("cpus", 1))), checkpoint_every=0,
                      deterministic=options.get("deterministic", False))
    fixed = dict(p["settings"])
    memorised_f1 = fixed.pop("memorised_f1")
    s = TrainSettings(**fixed, **{k: config[k] for k in SEARCHED})
    examples = Store(spec.results).read_shard("examples", "examples", p["examples_trial"])
    train = examples.filter(pl.col("split") == "train")
    validation = examples.filter(pl.col("split") == "validation")
    tokenizer = runtime.load_tokenizer(p["model"], s.max_length)

    def model_on(labels: np.ndarray):
        runtime.seed(p["seed"])
        return runtime.load_classifier(p["model"], p["n_labels"], tokenizer.pad_token_id), \
            encode_split(tokenizer, train, labels, s.max_length)

    noisy_labels = train["label"].to_numpy()
    model, data = model_on(noisy_labels)
    reached = {}

    def memorised(epoch: int) -> bool:
        with runtime.autocast():
            f1 = macro_f1(noisy_labels, predict(model, data).argmax(-1), p["n_labels"])
        if f1 >= memorised_f1:
            reached["epoch"] = epoch
        return bool(reached)  # stop once it is there: the constraint is met

    fine_tune(model, data, s, p["seed"], memorised, runtime)
    memorised_epoch = reached.get("epoch")
    val_labels = validation["original_label"].to_numpy()
    val_data = encode_split(tokenizer, validation, val_labels, s.max_length)
    model, data = model_on(train["original_label"].to_numpy())

    def evaluate(epoch: int) -> bool:
        with runtime.autocast():
            predicted = predict(model, val_data).argmax(-1)
        value = (float((predicted == val_labels).mean()) if p["metric"] == "accuracy"
                 else macro_f1(val_labels, predicted, p["n_labels"]))
        tune.report({"epoch": epoch, "validation": value, "memorised_epoch": memorised_epoch,
                     "objective": value - (memorised_epoch is None)})
        return False

    fine_tune(model, data, s, p["seed"], evaluate, runtime)
