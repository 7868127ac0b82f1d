"""Localisation (Dankers & Titov, 2024): in which layers the noisy labels are memorised.

For one (task, model, seed) a "pair" of checkpoints is studied: the memorised model (the
noisy variant at its memorised checkpoint, or its final one if it never got there) and
its clean twin (the clean variant, final checkpoint). Per pair, three stages:

    hidden            (Ray Data)  pooled hidden states of every layer, once per pair,
                                  for the techniques that use them
    localise          (Ray Tune)  the techniques' trials (raymem/localise/registry.py)
    localise-summary  (driver)    each technique's reduction to layer scores, M-CoG, and
                                  in the control setup whether it found the planted pair
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl

from raymem.localise.registry import TECHNIQUES
from raymem.localise.summary import m_cog
from raymem.localise.technique import PairInputs, layer_rows
from raymem.runtime import Runtime
from raymem.stages import control
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
    for noisy, clean in zip(controls[::2], controls[1::2]):
        trials += plan_pair(study, context, noisy, clean, tuple(noisy.params["pair"]))
    return trials


def plan_pair(study, context: PlanContext, memorised: Trial, clean: Trial,
              planted: tuple[int, int] | None = None) -> list[Trial]:
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
    hidden = Trial("hidden", {k: base[k] for k in ("task", "model", "seed", "pair", "memorised_trial",
                                                    "max_length")},
                   name, uri, (memorised.trial_id, examples.trial_id), runtime_options(cfg.actors))
    needs = (memorised.trial_id, clean.trial_id, examples.trial_id)
    techniques, uses_hidden = [], False
    for technique in (TECHNIQUES[t] for t in cfg.techniques):
        reads_hidden = "hidden" in technique.uses
        uses_hidden |= reads_hidden
        pair_base = {**base, "hidden_trial": hidden.trial_id} if reads_hidden else base
        techniques += [Trial(STAGE, params, name, uri, needs + ((hidden.trial_id,) if reads_hidden else ()),
                             runtime_options(cfg.resources))
                       for params in technique.trials(pair_base, context.n_layers[model], cfg)]
    summary = Trial(SUMMARY, {**{k: base[k] for k in PAIR_KEYS},
                              "trials": sorted(t.trial_id for t in techniques)},
                    name, uri, tuple(t.trial_id for t in techniques))
    return [*([hidden] if uses_hidden else []), *techniques, summary]


# -- one technique trial ------------------------------------------------------------------
def run(trial: Trial, runtime: Runtime) -> Tables:
    p = trial.params
    runtime.seed(p["seed"])  # nothing of a previous trial in this worker carries over
    return TECHNIQUES[p["technique"]].run(p, PairInputs(p, runtime), runtime)


# -- hidden states, once per pair, through a Ray Data actor pool ---------------------------
class PooledHiddenStates:
    """Ray Data callable class: pooled hidden states of every layer, each row by the
    checkpoint it names (an actor loads each checkpoint once and keeps it)."""

    def __init__(self, results: str, model: str, max_length: int, runtime: dict):
        self.runtime = Runtime(runtime.get("device", "auto"), runtime.get("precision", "auto"),
                               max(1, int(runtime.get("cpus", 1))), Store(results))
        self.checkpoints = {}
        self.tokenizer = self.runtime.load_tokenizer(model, max_length)
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raymem.localise.layers import pooled_hidden_states
        from raymem.train import Encoded

        hidden = [None] * len(batch["example_id"])
        for checkpoint in dict.fromkeys(batch["checkpoint"].tolist()):
            if checkpoint not in self.checkpoints:
                self.checkpoints[checkpoint] = self.runtime.load_checkpoint(checkpoint, ("memorised", "final"))
            rows = np.flatnonzero(batch["checkpoint"] == checkpoint)
            texts = [str(batch["text"][i]) for i in rows]
            pairs = [None if batch["text_pair"][i] is None else str(batch["text_pair"][i]) for i in rows]
            data = Encoded(self.tokenizer, texts, pairs, np.zeros(len(rows)), self.max_length)
            with self.runtime.autocast():
                states = pooled_hidden_states(self.checkpoints[checkpoint],
                                              self.runtime.to_device(data.batch(list(range(len(rows))))))
            for i, h in zip(rows, states.float().cpu().numpy().transpose(1, 0, 2)):  # (B, L+1, H)
                hidden[i] = h
        return {"hidden_trial": batch["hidden_trial"], "example_id": batch["example_id"],
                "hidden": np.stack(hidden)}


def extract_hidden(store: Store, trials: list[Trial], examples: dict, actors) -> None:
    """For each `hidden` trial, the pooled hidden states of every layer of its memorised
    checkpoint on the training examples, saved as (L+1, N, H). One Ray Data job per model."""
    import ray

    by_model: dict[str, list[Trial]] = {}
    for trial in trials:
        by_model.setdefault(trial.params["model"], []).append(trial)
    for model, group in by_model.items():
        trains = {t.trial_id: examples[t.params["task"], model].filter(pl.col("split") == "train")
                  .sort("example_id") for t in group}
        rows = pl.concat([trains[t.trial_id].select(
            "example_id", "text", "text_pair", pl.lit(t.trial_id).alias("hidden_trial"),
            pl.lit(t.params["memorised_trial"]).alias("checkpoint")) for t in group])
        out = ray.data.from_arrow(rows.to_arrow()).map_batches(
            PooledHiddenStates, batch_size=64, batch_format="numpy",
            fn_constructor_kwargs={"results": store.uri, "model": model,
                                   "max_length": group[0].params["max_length"], "runtime": group[0].runtime},
            compute=ray.data.ActorPoolStrategy(min_size=actors.min_size, max_size=actors.max_size),
            num_cpus=actors.cpus, num_gpus=actors.gpus)
        states = {}
        for batch in out.iter_batches(batch_format="numpy", batch_size=None):
            states.update(zip(zip(batch["hidden_trial"].tolist(), batch["example_id"].tolist()), batch["hidden"]))
        for trial in group:
            ids = trains[trial.trial_id]["example_id"].to_list()
            hidden = np.stack([states[trial.trial_id, e] for e in ids], axis=1)
            buffer = io.BytesIO()
            np.save(buffer, hidden.astype(np.float32), allow_pickle=False)
            store.put_bytes(buffer.getvalue(), "checkpoints", trial.trial_id, "hidden.npy")
            store.mark_done(trial.trial_id, trial.params)


def read_hidden(store: Store, trial_id: str) -> np.ndarray:
    return np.load(io.BytesIO(store.get_bytes("checkpoints", trial_id, "hidden.npy")), allow_pickle=False)


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
        scores, extra = TECHNIQUES[name].reduce(store, mine, keys)
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
