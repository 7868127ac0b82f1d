"""Localisation trials (RESEARCH.md 3): in which layers the noisy labels are memorised.

For one (task, model, seed) a "pair" of checkpoints is studied: the memorised model (the
noisy variant at its memorised checkpoint, or its final one if it never got there) and
its clean twin (the clean variant, final checkpoint). Trials, each independent:

    swapping                 all windows; writes window_scores and layer_scores
    retraining  (a window)   one window reset to pre-trained weights and retrained
    gradients                forgetting gradients against a head-only control model
    probing                  MLP probes on pooled hidden states
    centroids                crossing / initiation events; layer score = share of crossings

Probing and centroids read the pooled hidden states that the `hidden` step extracted
once per pair through a Ray Data actor pool. After the sweep, `summarise` turns the
retraining windows into layer scores and writes every technique's M-CoG.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from transformers import AutoModelForSequenceClassification

from raymem.localise import centroids, gradients, probing, retraining, swapping
from raymem.localise.layers import num_layers, pooled_hidden_states
from raymem.localise.summary import m_cog
from raymem.models import load_classifier, load_tokenizer, model_spec, quiet_transformers
from raymem.stages import control
from raymem.store import Store
from raymem.sweep import make_trial
from raymem.train import Encoded, TrainSettings, predict

STAGE = "localise"
TECHNIQUES = ("swapping", "retraining", "gradients", "probing", "centroids")


# -- inputs of a pair -------------------------------------------------------------------
def load_checkpoint(store: Store, trial_id: str, names: tuple[str, ...]):
    """The first of `names` that the trial saved (e.g. memorised, else final)."""
    quiet_transformers()
    for name in names:
        if store.exists("checkpoints", trial_id, name):
            with tempfile.TemporaryDirectory() as tmp:
                store.get_dir(tmp, "checkpoints", trial_id, name)
                return AutoModelForSequenceClassification.from_pretrained(tmp).eval()
    raise FileNotFoundError(f"trial {trial_id} saved none of the checkpoints {names}")


def load_pair(store: Store, p: dict):
    memorised = load_checkpoint(store, p["memorised_trial"], ("memorised", "final"))
    clean = load_checkpoint(store, p["clean_trial"], ("final",))
    return memorised, clean


def training_split(store: Store, p: dict):
    """Train examples, their encodings with the noisy labels, and the noisy flags."""
    examples = store.read_shard("examples", "examples", p["examples_trial"])
    train = examples.filter(pl.col("split") == "train").sort("example_id")
    tokenizer = load_tokenizer(model_spec(p["model"]), p["max_length"])
    labels = train["label"].to_numpy()
    data = Encoded(tokenizer, train["text"].to_list(), train["text_pair"].to_list(), labels,
                   p["max_length"])
    return train, data, labels, train["noisy"].to_numpy()


def layer_rows(p: dict, technique: str, scores: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"task": p["task"], "model": p["model"], "seed": p["seed"],
                         "pair": p["pair"], "technique": technique,
                         "layer": np.arange(1, len(scores) + 1), "score": np.asarray(scores, float)})


def with_keys(p: dict, frame: pl.DataFrame, technique: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(p["task"]).alias("task"), pl.lit(p["model"]).alias("model"),
                              pl.lit(p["seed"]).alias("seed"), pl.lit(p["pair"]).alias("pair"),
                              pl.lit(technique).alias("technique"))


# -- trials -------------------------------------------------------------------------------
def run_trial(trial: dict, store: Store, report) -> dict:
    p = trial["params"]
    train, data, labels, noisy = training_split(store, p)
    write = lambda table, rows: store.write_rows(table, STAGE, trial["trial_id"], rows, trial["study"])  # noqa: E731
    technique = p["technique"]
    if technique == "swapping":
        memorised, clean = load_pair(store, p)
        windows = swapping.swapping_windows(memorised, clean, data, labels, noisy)
        write("window_scores", with_keys(p, windows, technique))
        write("layer_scores", layer_rows(p, technique, swapping.layer_scores_from_windows(
            windows, num_layers(memorised))))
    elif technique == "retraining":
        memorised, _ = load_pair(store, p)
        pretrained = load_classifier(model_spec(p["model"]), p["n_labels"])
        clean_train, _ = clean_split(noisy, p["seed"])
        s = TrainSettings(**p["retrain"])
        start, end = p["window"]
        model = retraining.retrain_window(memorised, pretrained, start, end, data.subset(clean_train),
                                          s, seed=p["seed"])
        noisy_index = np.flatnonzero(noisy)
        noisy_acc = accuracy(model, data.subset(noisy_index), labels[noisy_index])
        write("retrain_windows", with_keys(p, pl.DataFrame(
            {"window_start": [start], "window_end": [end], "noisy_acc": [noisy_acc]}), technique))
    elif technique == "gradients":
        memorised, _ = load_pair(store, p)
        control = head_only_control(p, data, TrainSettings(**p["control_training"]))
        noisy_index = np.flatnonzero(noisy)
        clean_index = gradients.matched_clean_index(noisy, p["seed"])
        scores = gradients.forgetting_gradient_scores(memorised, control, data, noisy_index, clean_index)
        write("layer_scores", layer_rows(p, technique, scores))
    elif technique in ("probing", "centroids"):
        hidden = read_hidden(store, p["hidden_trial"])
        if technique == "probing":
            settings = probing.ProbeSettings(seeds=tuple(p["probe_seeds"]), epochs=p["probe_epochs"])
            write("layer_scores", layer_rows(p, technique, probing.probing_scores(hidden, noisy, settings)))
        else:
            events = centroids.centroid_events(hidden, labels, train["original_label"].to_numpy(), noisy,
                                               p["n_labels"])
            write("events", with_keys(p, events, technique))
            write("layer_scores", layer_rows(p, technique, crossing_shares(events, hidden.shape[0] - 1)))
    else:
        raise ValueError(f"unknown technique {technique!r}")
    return {"device": "cpu"}


def clean_split(noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean examples to retrain on, held-out clean set as large as the noisy set)."""
    clean = np.flatnonzero(~noisy)
    held_out = np.random.default_rng(seed).choice(clean, size=min(noisy.sum(), len(clean) // 2),
                                                  replace=False)
    return np.setdiff1d(clean, held_out), np.sort(held_out)


def accuracy(model, data: Encoded, labels: np.ndarray) -> float:
    return float((predict(model, data).argmax(-1) == labels).mean())


def head_only_control(p: dict, data: Encoded, s: TrainSettings):
    """The control model: pre-trained body frozen, only the head trained on the same labels."""
    model = load_classifier(model_spec(p["model"]), p["n_labels"])
    model.config.use_cache = False
    return retraining.train_head(model, data, s, p["seed"])


def crossing_shares(events: pl.DataFrame, n_layers: int) -> np.ndarray:
    """Centroid layer scores: the share of class pairs whose noisy examples cross at each layer."""
    layers = events.filter((pl.col("event") == "crossing") & pl.col("layer").is_not_null()
                           & (pl.col("layer") >= 1))["layer"].to_numpy()
    counts = np.bincount(layers, minlength=n_layers + 1)[1:n_layers + 1].astype(float)
    return counts / counts.sum() if counts.sum() else counts


# -- hidden states, once per pair, through a Ray Data actor pool ---------------------------
class PooledHiddenStates:
    """Ray Data callable class: pooled hidden states of every layer, each row by the
    checkpoint it names (an actor loads each checkpoint once and keeps it)."""

    def __init__(self, results: str, model: str, max_length: int):
        self.store = Store(results)
        self.checkpoints = {}
        self.tokenizer = load_tokenizer(model_spec(model), max_length)
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        hidden = [None] * len(batch["example_id"])
        for checkpoint in dict.fromkeys(batch["checkpoint"].tolist()):
            if checkpoint not in self.checkpoints:
                self.checkpoints[checkpoint] = load_checkpoint(self.store, checkpoint, ("memorised", "final"))
            rows = np.flatnonzero(batch["checkpoint"] == checkpoint)
            texts = [str(batch["text"][i]) for i in rows]
            pairs = [None if batch["text_pair"][i] is None else str(batch["text_pair"][i]) for i in rows]
            data = Encoded(self.tokenizer, texts, pairs, np.zeros(len(rows)), self.max_length)
            states = pooled_hidden_states(self.checkpoints[checkpoint], data.batch(list(range(len(rows)))))
            for i, h in zip(rows, states.float().numpy().transpose(1, 0, 2)):  # (B, L+1, H)
                hidden[i] = h
        return {"hidden_trial": batch["hidden_trial"], "example_id": batch["example_id"],
                "hidden": np.stack(hidden)}


def extract_hidden(store: Store, pairs: list[PairPlan], examples: dict, actors) -> None:
    """For each pair, the pooled hidden states of every layer of its memorised checkpoint
    on the training examples, saved as (L+1, N, H). One Ray Data job per model."""
    import ray

    by_model: dict[str, list[PairPlan]] = {}
    for pair in pairs:
        by_model.setdefault(pair.base["model"], []).append(pair)
    for model, group in by_model.items():
        trains = {pair.hidden["trial_id"]: examples[pair.base["task"], model]
                  .filter(pl.col("split") == "train").sort("example_id") for pair in group}
        rows = pl.concat([trains[pair.hidden["trial_id"]].select(
            "example_id", "text", "text_pair", pl.lit(pair.hidden["trial_id"]).alias("hidden_trial"),
            pl.lit(pair.base["memorised_trial"]).alias("checkpoint")) for pair in group])
        out = ray.data.from_arrow(rows.to_arrow()).map_batches(
            PooledHiddenStates, batch_size=64, batch_format="numpy",
            fn_constructor_kwargs={"results": store.uri, "model": model,
                                   "max_length": group[0].base["max_length"]},
            compute=ray.data.ActorPoolStrategy(min_size=actors.min_size, max_size=actors.max_size),
            num_cpus=actors.cpus, num_gpus=actors.gpus)
        states = {}
        for batch in out.iter_batches(batch_format="numpy", batch_size=None):
            states.update(zip(zip(batch["hidden_trial"].tolist(), batch["example_id"].tolist()), batch["hidden"]))
        for pair in group:
            trial_id = pair.hidden["trial_id"]
            hidden = np.stack([states[trial_id, e] for e in trains[trial_id]["example_id"].to_list()], axis=1)
            buffer = io.BytesIO()
            np.save(buffer, hidden.astype(np.float32), allow_pickle=False)
            store.put_bytes(buffer.getvalue(), "checkpoints", trial_id, "hidden.npy")
            store.mark_done(trial_id, pair.hidden["params"])


def read_hidden(store: Store, trial_id: str) -> np.ndarray:
    return np.load(io.BytesIO(store.get_bytes("checkpoints", trial_id, "hidden.npy")), allow_pickle=False)


# -- plan and summary ---------------------------------------------------------------------
@dataclass
class PairPlan:
    """Everything run for one (memorised, clean twin) pair of checkpoints."""
    base: dict  # the parameters every trial of the pair shares
    n_layers: int
    hidden: dict  # the hidden-state extraction step
    trials: list[dict]
    summary: dict
    planted: tuple[int, int] | None = None  # the control setup's layer pair


def pair_base(study, task: str, model: str, seed: int, memorised_trial: str, clean_trial: str,
              examples_trial: str, n_labels: int, planted: tuple[int, int] | None = None) -> dict:
    control_training = study.finetune.model_dump(include={"epochs", "lr", "batch_size", "max_length",
                                                          "warmup", "clip", "weight_decay"})
    return {"task": task, "model": model, "seed": seed,
            "pair": f"{planted[0]}-{planted[1]}" if planted else "",
            "memorised_trial": memorised_trial, "clean_trial": clean_trial,
            "examples_trial": examples_trial, "n_labels": n_labels,
            "max_length": study.finetune.max_length, "control_training": control_training}


def plan_pair(study_name: str, results: str, base: dict, n_layers: int, cfg,
              planted: tuple[int, int] | None = None) -> PairPlan:
    """The hidden-state step, the technique trials and the summary of one pair."""
    hidden = make_trial("hidden", {k: base[k] for k in ("task", "model", "seed", "pair",
                                                         "memorised_trial", "max_length")},
                        study_name, results)
    trials = []
    for technique in cfg.techniques:
        params = {**base, "technique": technique}
        if technique == "retraining":
            retrain = {"epochs": cfg.retrain_epochs, "lr": cfg.retrain_lr,
                       "batch_size": cfg.retrain_batch_size, "max_length": base["max_length"],
                       "warmup": 0.0, "freeze_embeddings": True}
            trials += [make_trial(STAGE, {**params, "retrain": retrain, "window": list(w)},
                                  study_name, results) for w in swapping.windows(n_layers)]
            continue
        if technique in ("probing", "centroids"):
            params |= {"hidden_trial": hidden["trial_id"], "probe_seeds": cfg.probe_seeds,
                       "probe_epochs": cfg.probe_epochs}
        trials.append(make_trial(STAGE, params, study_name, results))
    summary = make_trial(STAGE + "-summary", {**{k: base[k] for k in ("task", "model", "seed", "pair")},
                                              "trials": sorted(t["trial_id"] for t in trials)},
                         study_name, results)
    return PairPlan(base, n_layers, hidden, trials, summary, planted)


def summarise(store: Store, pair: PairPlan) -> None:
    """Retraining windows -> window and layer scores; every technique's layer scores -> M-CoG
    (and, in the control setup, whether each technique found the planted pair)."""
    summary, trials, n_layers = pair.summary, pair.trials, pair.n_layers
    if store.is_done(summary["trial_id"]):
        return
    p = summary["params"]
    study = summary["study"]
    retrain = [t for t in trials if t["params"]["technique"] == "retraining"]
    if retrain:
        rows = pl.concat([store.read_shard("retrain_windows", STAGE, t["trial_id"]) for t in retrain])
        accuracy = {(r["window_start"], r["window_end"]): r["noisy_acc"] for r in rows.iter_rows(named=True)}
        windows = retraining.window_errors(accuracy, n_layers)
        store.write_rows("window_scores", STAGE, summary["trial_id"], with_keys(p, windows, "retraining"), study)
        scores = np.nan_to_num(swapping.layer_scores_from_windows(windows, n_layers))
        store.write_rows("layer_scores", STAGE, summary["trial_id"], layer_rows(p, "retraining", scores), study)
    per_layer = [store.read_shard("layer_scores", STAGE, t["trial_id"]) for t in trials
                 if t["params"]["technique"] != "retraining"]
    if retrain:
        per_layer.append(store.read_shard("layer_scores", STAGE, summary["trial_id"]))
    mcog = pl.DataFrame({"technique": [f["technique"][0] for f in per_layer],
                         "mcog": [m_cog(f.sort("layer")["score"].to_numpy()) for f in per_layer]})
    keys = [pl.lit(p[k]).alias(k) for k in ("task", "model", "seed", "pair")]
    store.write_rows("mcog", STAGE, summary["trial_id"], mcog.with_columns(keys), study)
    if pair.planted:
        found = control.accuracy_rows(pl.concat(per_layer, how="diagonal_relaxed"), pair.planted, n_layers)
        store.write_rows("control_accuracy", STAGE, summary["trial_id"], found.with_columns(keys), study)
    store.mark_done(summary["trial_id"], p)
