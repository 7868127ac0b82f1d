"""Localisation (Dankers & Titov, 2024): in which layers the noisy labels are memorised.

For one (task, model, seed) a "pair" of checkpoints is studied: the noisy variant and its
clean twin (the clean variant, final checkpoint). As the original, swapping, retraining,
probing and centroids compare the noisy model's final checkpoint with the twin's (like
with like: a swapped window carries no difference in training time); forgetting
gradients reads the noisy model at its memorised checkpoint (its final one if it never
got there). With `localise.checkpoint: memorised`, every technique compares the noisy
model's memorised checkpoint with a clean twin trained with the same schedule up to that
same epoch (a fine-tuning trial of its own, `finetune.clean_twin`). Per pair, three stages:

    hidden            (Ray Tune)  pooled hidden states of every layer, once per pair, for
                                  the techniques that use them (raymem/stages/hidden.py)
    localise          (Ray Tune)  the techniques' trials (raymem/localise/registry.py)
    localise-summary  (driver)    each technique's reduction to layer scores, M-CoG, and
                                  in the control setup whether it found the planted pair
"""

from __future__ import annotations

import polars as pl

from raymem.localise.registry import technique as registered
from raymem.localise.summary import m_cog
from raymem.localise.technique import PairInputs, layer_rows
from raymem.runtime import Runtime
from raymem.stages import control, finetune
from raymem.stages import search
from raymem.stages.common import runtime_options
from raymem.store import Store
from raymem.trial import PlanContext, Tables, Trial

STAGE = "localise"
WHERE = "tune"
SUMMARY = STAGE + "-summary"
PAIR_KEYS = ("task", "model", "seed", "pair")


# -- plan ---------------------------------------------------------------------------------
def plan(study, context: PlanContext) -> list[Trial]:
    """Per pair: its hidden-state step, its technique trials and its summary. Pairs are the
    fine-tuned (noisy, clean) twins, then the control setup's planted pairs."""
    finetuned = {tuple(t.params[k] for k in ("task", "model", "seed", "variant")): t
                 for t in context.of_stage("finetune")}
    trials = []
    for task in study.task_names():
        for model in study.models:
            for seed in study.seeds:
                trials += plan_pair(study, context, finetuned[task, model, seed, "noisy"],
                                    finetuned[task, model, seed, "clean"])
    controls = context.of_stage(control.STAGE)
    frozen = {tuple(t.params[k] for k in ("task", "model", "seed")): t
              for t in controls if t.params["variant"] == "frozen"}
    planted = [t for t in controls if t.params["variant"] != "frozen"]  # noisy, clean, in that order
    for noisy, clean in zip(planted[::2], planted[1::2]):
        trials += plan_pair(study, context, noisy, clean, tuple(noisy.params["pair"]),
                            frozen.get(tuple(noisy.params[k] for k in ("task", "model", "seed"))))
    return trials


def plan_pair(study, context: PlanContext, memorised: Trial, clean: Trial,
              planted: tuple[int, int] | None = None, normaliser: Trial | None = None) -> list[Trial]:
    """A pair's trials; `normaliser`, in the control setup, the frozen control model that the
    techniques reading it (`Technique.reads_control_model`) take as their baseline."""
    p = memorised.params
    task, model, seed = p["task"], p["model"], p["seed"]
    examples = context.examples_trials[task, model]
    cfg = study.localise
    # the head-only control model of forgetting gradients trains with these
    control_training, searched = search.with_search(
        study.finetune.model_dump(include={"epochs", "lr", "batch_size", "max_length", "warmup", "clip",
                                           "weight_decay"}), context, task, model)
    base = {"task": task, "model": model, "seed": seed,
            "pair": f"{planted[0]}-{planted[1]}" if planted else "",
            "memorised_trial": memorised.trial_id, "clean_trial": clean.trial_id,
            "examples_trial": examples.trial_id, "n_labels": context.n_labels[task],
            "max_length": study.finetune.max_length, "control_training": control_training,
            **({"search_trial": searched[0]} if searched else {})}
    uri, name = context.results, study.study
    twins = []
    if cfg.checkpoint == "memorised" and not planted:  # control models keep only a final checkpoint
        twins = [finetune.clean_twin(clean, memorised)]
        base["clean_trial"] = twins[0].trial_id
    compared = "memorised" if twins else "final"  # by every technique that compares like with like
    # probing and centroids read the hidden states of the compared checkpoint
    hidden = Trial("hidden", {**{k: base[k] for k in ("task", "model", "seed", "pair", "memorised_trial",
                                                      "max_length")}, "checkpoint": compared},
                   name, uri, (memorised.trial_id, examples.trial_id), runtime_options(cfg.hidden_resources))
    needs = (memorised.trial_id, base["clean_trial"], examples.trial_id)
    techniques, uses_hidden = [], False
    for technique in (registered(t) for t in cfg.techniques):
        reads_hidden = "hidden" in technique.uses
        uses_hidden |= reads_hidden
        normalised = normaliser is not None and technique.reads_control_model(cfg)
        pair_base = {**base, "checkpoint": "memorised" if twins else technique.noisy_checkpoint,
                     **({"hidden_trial": hidden.trial_id} if reads_hidden else {}),
                     **({"control_model_trial": normaliser.trial_id} if normalised else {})}
        extra_needs = ((hidden.trial_id,) if reads_hidden else ()) + ((normaliser.trial_id,) if normalised else ())
        techniques += [Trial(STAGE, params, name, uri, needs + extra_needs,
                             runtime_options(cfg.resources))
                       for params in technique.trials(pair_base, context.n_layers[model], cfg)]
    summary = Trial(SUMMARY, {**{k: base[k] for k in PAIR_KEYS},
                              "trials": sorted(t.trial_id for t in techniques)},
                    name, uri, tuple(t.trial_id for t in techniques))
    return [*twins, *([hidden] if uses_hidden else []), *techniques, summary]


# -- one technique trial ------------------------------------------------------------------
def run(trial: Trial, runtime: Runtime) -> Tables:
    p = trial.params
    runtime.seed(p["seed"])  # nothing of a previous trial in this worker carries over
    return registered(p["technique"]).run(p, PairInputs(p, runtime), runtime)


# -- the pair's summary (driver) ------------------------------------------------------------
def summarise(summary: Trial, techniques: list[Trial], store: Store) -> Tables:
    """Each technique's reduction -> layer scores; M-CoG per technique; in the control setup,
    whether each technique found the planted pair."""
    p = summary.params
    keys = {k: p[k] for k in PAIR_KEYS}
    tables: dict[str, list[pl.DataFrame]] = {}
    per_layer = []
    for name in dict.fromkeys(t.params["technique"] for t in techniques):
        mine = [t for t in techniques if t.params["technique"] == name]
        scores, extra = registered(name).reduce(store, mine, keys)
        per_layer.append(layer_rows(keys, name, scores))
        for table, rows in extra.items():
            tables.setdefault(table, []).append(rows)
    mcog = pl.DataFrame({"technique": [f["technique"][0] for f in per_layer],
                         "mcog": [m_cog(f["score"].to_numpy()) for f in per_layer]})
    out = {table: pl.concat(frames) for table, frames in tables.items()}
    key_columns = [pl.lit(p[k]).alias(k) for k in PAIR_KEYS]
    out["mcog"] = mcog.with_columns(key_columns)
    if p["pair"]:
        planted = tuple(int(x) for x in p["pair"].split("-"))
        found = control.accuracy_rows(pl.concat(per_layer), planted, per_layer[0].height)
        out["control_accuracy"] = found.with_columns(key_columns)
    return out
