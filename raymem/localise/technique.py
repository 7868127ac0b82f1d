"""What a localisation technique is to raymem: settings, inputs, trials, run, reduction.

One subclass per technique, in that technique's module, and one line in
raymem/localise/registry.py. A technique says:

- `name`: its registry key and the `technique` column of its rows;
- `uses`: what its trials read, out of USES (a scheduler and `raymem plan` read it);
- `noisy_checkpoint`: which checkpoint of the noisy model it compares with the clean
  twin's final one: "final" (like with like, as the original for swapping, retraining,
  probing and centroids) or "memorised" (forgetting gradients, as the original);
- `settings(cfg)`: its own settings from the study's `localise` block: these alone, with
  the pair, enter its trial ids, so changing one technique's settings re-runs no other;
- `trials(base, n_layers, cfg)`: the parameters of its trials: one, or several (retraining:
  one per start layer);
- `run(params, pair, runtime)`: one trial on a pair's inputs -> its tables;
- `reduce(store, trials, keys)`: the pair's layer scores (L,) from its trials, and
  any tables the pair's summary writes (e.g. retraining's window scores).
"""

from __future__ import annotations

import io
from functools import cached_property

import numpy as np
import polars as pl

from raymem.runtime import Runtime
from raymem.train import encode_split, train_split
from raymem.trial import Tables, Trial

STAGE = "localise"
# pair: the noisy model and its clean twin; pretrained: the weights fine-tuning started
# from; hidden: pooled hidden states of the noisy model's final checkpoint (one trial per pair);
# control_model: in the control setup, a trained model to normalise by (the "frozen" control model)
USES = ("pair", "pretrained", "hidden", "control_model")
# the checkpoints of the noisy model a trial may load, first found first: a noisy model that
# never reached the memorised checkpoint is compared at its final one
CHECKPOINTS = {"final": ("final",), "memorised": ("memorised", "final")}
# a hidden-state trial's (L+1, N, H) array, under checkpoints/<trial_id>/ (raymem/stages/hidden.py)
HIDDEN_FILE = "hidden.npy"


class Technique:
    name: str = ""
    uses: frozenset[str] = frozenset({"pair"})
    noisy_checkpoint: str = "final"

    def settings(self, cfg) -> dict:
        return {}

    def reads_control_model(self, cfg) -> bool:
        """Whether its control-setup trials read the frozen control model (`control_model_trial`)."""
        return "control_model" in self.uses

    def trials(self, base: dict, n_layers: int, cfg) -> list[dict]:
        return [{**base, "technique": self.name, **self.settings(cfg)}]

    def run(self, p: dict, pair: "PairInputs", runtime: Runtime) -> Tables:
        raise NotImplementedError

    def reduce(self, store, trials: list[Trial], keys: dict) -> tuple[np.ndarray, Tables]:
        """Default: the one trial wrote the layer scores itself."""
        (trial,) = trials
        scores = store.read_shard("layer_scores", STAGE, trial.trial_id).sort("layer")["score"].to_numpy()
        return scores, {}


class PairInputs:
    """A trial's view of its pair, each part loaded on first use onto the runtime's device."""

    def __init__(self, p: dict, runtime: Runtime):
        self.p, self.runtime = p, runtime

    @cached_property
    def train(self) -> pl.DataFrame:
        return train_split(self.runtime.store, self.p["examples_trial"])

    @cached_property
    def labels(self) -> np.ndarray:
        """The training labels: noisy labels for the noisy examples."""
        return self.train["label"].to_numpy()

    @cached_property
    def noisy(self) -> np.ndarray:
        return self.train["noisy"].to_numpy()

    @cached_property
    def tokenizer(self):
        return self.runtime.load_tokenizer(self.p["model"], self.p["max_length"])

    @cached_property
    def data(self):
        return encode_split(self.tokenizer, self.train, self.labels, self.p["max_length"])

    @cached_property
    def memorised(self):
        """The noisy model at the checkpoint the trial's technique compares (`checkpoint`)."""
        return self.runtime.load_checkpoint(self.p["memorised_trial"], CHECKPOINTS[self.p["checkpoint"]])

    @cached_property
    def clean(self):
        return self.runtime.load_checkpoint(self.p["clean_trial"], ("final",))

    def pretrained(self):
        """A fresh classifier on the pre-trained weights (its head seeded by the trial), with
        the tokenizer's pad token like every other model: a decoder shipped without one
        (GPT-Neo style) could not take a padded batch otherwise."""
        self.runtime.seed(self.p["seed"])
        return self.runtime.load_classifier(self.p["model"], self.p["n_labels"], self.tokenizer.pad_token_id)

    def hidden(self) -> np.ndarray:
        return read_hidden(self.runtime.store, self.p["hidden_trial"])


def read_hidden(store, trial_id: str) -> np.ndarray:
    return np.load(io.BytesIO(store.get_bytes("checkpoints", trial_id, HIDDEN_FILE)), allow_pickle=False)


def layer_rows(p: dict, technique: str, scores: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"task": p["task"], "model": p["model"], "seed": p["seed"],
                         "pair": p["pair"], "technique": technique,
                         "layer": np.arange(1, len(scores) + 1), "score": np.asarray(scores, float)})


def with_keys(p: dict, frame: pl.DataFrame, technique: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(p["task"]).alias("task"), pl.lit(p["model"]).alias("model"),
                              pl.lit(p["seed"]).alias("seed"), pl.lit(p["pair"]).alias("pair"),
                              pl.lit(technique).alias("technique"))
