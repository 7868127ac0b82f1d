"""Neuron-level localisation (Chang et al., 2024, for classification): which FFN units hold
the memorised (noisy) labels, with a planted ground truth.

Per (task, model, seed), trials of one stage, each scoring every unit of every layer with
every technique of `neurons.techniques` (raymem/localise/registry.py: NEURON_TECHNIQUES):

    target "noisy"                the noisy fine-tuned model (final checkpoint): where
                                  fine-tuning put the memorised labels; deletion test only
    target "planted-<layers>-<s>" the clean model (final checkpoint) with the noisy labels
                                  fitted through planted units of those layers alone
                                  (raymem/localise/neuron_planting.py): recall@k of the
                                  planted units, k their number, and the deletion test

Tables (long format, small types: a unit's row is two int16 and a float32):
neuron_scores (layer, unit, score per technique), neuron_layers (per-layer sums, the layer
profile), neuron_summary (per technique: recall@k and chance where planted, M-CoG,
seconds), neuron_deletion (accuracy with the top p% dropped, random floor), neuron_planted
(the planted units).
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from raymem.localise.gradients import matched_clean_index
from raymem.localise.layers import num_layers
from raymem.localise.neuron_planting import choose_planted, deletion_rows, plant
from raymem.localise.registry import neuron_technique
from raymem.localise.neurons import layer_profile, recall_at_k, units_per_layer
from raymem.localise.summary import m_cog
from raymem.errors import ConfigError
from raymem.runtime import Runtime
from raymem.stages.common import runtime_options
from raymem.train import encode_split
from raymem.trial import PlanContext, Tables, Trial

STAGE = "neurons"
WHERE = "tune"
KEYS = ("task", "model", "seed", "target")
SETTINGS = ("techniques", "planted_fraction", "plant_lr", "plant_epochs", "plant_stop_loss", "batch_size",
            "zero_out_chunk", "ig_steps", "ig_batch_size", "mask_batch_size", "slim_lambda", "slim_lr",
            "slim_epochs", "slim_stop_loss", "hc_lambda", "hc_lr", "hc_epochs", "hc_stop_loss", "hc_mask_p",
            "hc_beta", "deletion_percents", "deletion_random_draws", "heldout")


def default_planted_layers(n_layers: int) -> list[list[int]]:
    return [[max(1, n_layers // 2)], [n_layers - 1, n_layers]] if n_layers > 1 else [[1]]


def plan(study, context: PlanContext) -> list[Trial]:
    cfg = study.neurons
    finetuned = {tuple(t.params[k] for k in ("task", "model", "seed", "variant")): t
                 for t in context.of_stage("finetune")}
    settings = cfg.model_dump(include=set(SETTINGS))
    if cfg.scored_examples is not None:  # a trial's id holds it only when set: ids of earlier runs stand
        settings["scored_examples"] = cfg.scored_examples
    trials = []
    for task in study.task_names():
        for model in study.models:
            layers = context.n_layers[model]
            sets = cfg.planted_layers or default_planted_layers(layers)
            for chosen in sets:
                if any(not 1 <= layer <= layers for layer in chosen):
                    raise ConfigError(f"neurons.planted_layers: {chosen} is outside model {model} "
                                      f"(layers 1..{layers})")
            examples = context.examples_trials[task, model]
            for seed in study.seeds:
                base = {"task": task, "model": model, "seed": seed, "n_labels": context.n_labels[task],
                        "examples_trial": examples.trial_id, "max_length": study.finetune.max_length,
                        "eval_split": study.eval_split, **settings}
                targets = [("noisy", finetuned[task, model, seed, "noisy"], {})] if cfg.noisy_model else []
                targets += [(f"planted-{'+'.join(map(str, chosen))}-{s}", finetuned[task, model, seed, "clean"],
                             {"planted_layers": chosen, "planted_seed": s})
                            for chosen in sets for s in cfg.planted_seeds]
                trials += [Trial(STAGE, {**base, "target": target, "model_trial": source.trial_id, **extra},
                                 study.study, context.results, (source.trial_id, examples.trial_id),
                                 runtime_options(cfg.resources))
                           for target, source, extra in targets]
    return trials


def run(trial: Trial, runtime: Runtime) -> Tables:
    p = trial.params
    runtime.seed(p["seed"])
    examples = runtime.store.read_shard("examples", "examples", p["examples_trial"]).sort("example_id")
    train = examples.filter(pl.col("split") == "train")
    heldout = examples.filter(pl.col("split") == p["eval_split"]).head(p["heldout"])
    tokenizer = runtime.load_tokenizer(p["model"], p["max_length"])
    data = encode_split(tokenizer, train, train["label"].to_numpy(), p["max_length"])
    heldout_data = encode_split(tokenizer, heldout, heldout["original_label"].to_numpy(), p["max_length"])
    noisy_mask = train["noisy"].to_numpy()
    memorised, clean = np.flatnonzero(noisy_mask), matched_clean_index(noisy_mask, p["seed"])
    scored, scored_clean = scored_sample(memorised, clean, p.get("scored_examples"), p["seed"])
    model = runtime.load_checkpoint(p["model_trial"], ("final",))
    model.config.use_cache = False
    shape = (num_layers(model), units_per_layer(model))
    planted, fit = None, {"plant_epochs": 0, "plant_loss": float("nan")}
    with runtime.autocast():
        if "planted_layers" in p:
            count = max(len(p["planted_layers"]), int(round(p["planted_fraction"] * shape[0] * shape[1])))
            planted = choose_planted(*shape, p["planted_layers"], count, p["planted_seed"])
            info = plant(model, data, memorised, np.flatnonzero(~noisy_mask), planted, p["seed"],
                         p["plant_lr"], p["plant_epochs"], p["plant_stop_loss"], p["batch_size"])
            fit = {"plant_epochs": info["epochs"], "plant_loss": info["noisy_loss"]}
        scores, seconds = {}, {}
        for name in p["techniques"]:
            start = time.perf_counter()
            scores[name] = neuron_technique(name)(model, data, scored, scored_clean, p)
            seconds[name] = time.perf_counter() - start
        deletion = deletion_rows(model, scores, p["deletion_percents"], data.subset(memorised), heldout_data,
                                 p["deletion_random_draws"], p["seed"])
    return tables(p, scores, seconds, deletion, planted, fit, len(memorised), len(scored))


def scored_sample(memorised: np.ndarray, clean: np.ndarray, most: int | None, seed: int):
    """The memorised examples the techniques score, and as many of the matched clean ones:
    all of them, or a sample of `most` drawn with the model seed (sorted, as the index)."""
    if most is None or len(memorised) <= most:
        return memorised, clean
    rng = np.random.default_rng(seed)
    return (np.sort(rng.choice(memorised, most, replace=False)),
            np.sort(rng.choice(clean, min(most, len(clean)), replace=False)))


def tables(p: dict, scores: dict[str, np.ndarray], seconds: dict[str, float], deletion: pl.DataFrame,
           planted: np.ndarray | None, fit: dict, n_memorised: int, n_scored: int) -> Tables:
    keys = [pl.lit(p[k]).alias(k) for k in KEYS]
    n_layers, n_units = next(iter(scores.values())).shape
    layer = np.repeat(np.arange(1, n_layers + 1, dtype=np.int16), n_units)
    unit = np.tile(np.arange(n_units, dtype=np.int16), n_layers)
    unit_rows = pl.concat([pl.DataFrame({"layer": layer, "unit": unit, "score": s.astype(np.float32).ravel()})
                           .with_columns(pl.lit(name).alias("technique")) for name, s in scores.items()])
    profiles = {name: layer_profile(s) for name, s in scores.items()}
    layer_rows = pl.DataFrame({"technique": [n for n in profiles for _ in range(n_layers)],
                               "layer": [l for _ in profiles for l in range(1, n_layers + 1)],
                               "score": np.concatenate(list(profiles.values()))})
    k = 0 if planted is None else len(planted)
    summary = pl.DataFrame({
        "technique": list(scores),
        "recall_at_k": [recall_at_k(s, planted) if k else float("nan") for s in scores.values()],
        "k": k, "chance": k / (n_layers * n_units) if k else float("nan"),
        "mcog": [m_cog(profiles[n]) for n in scores], "seconds": [seconds[n] for n in scores],
        "n_memorised": n_memorised, "n_scored": n_scored, "n_units": n_layers * n_units, **fit},
        schema_overrides={"k": pl.Int64, "n_memorised": pl.Int64, "n_scored": pl.Int64, "n_units": pl.Int64, "plant_epochs": pl.Int64})
    out = {"neuron_scores": unit_rows,
           "neuron_layers": layer_rows, "neuron_summary": summary, "neuron_deletion": deletion}
    if planted is not None:
        out["neuron_planted"] = pl.DataFrame({"layer": (planted[:, 0] + 1).astype(np.int16),
                                              "unit": planted[:, 1].astype(np.int16)})
    return {name: frame.with_columns(keys) for name, frame in out.items()}
