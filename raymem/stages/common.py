"""Small pieces every stage shares: how its trials run, reading and encoding a split."""

from __future__ import annotations

import numpy as np
import polars as pl

from raymem.config import Hardware
from raymem.train import Encoded


def runtime_options(hardware: Hardware, checkpoint_every: int = 0) -> dict:
    """A trial's `runtime` field: its resources, device, precision and checkpointing."""
    return {**hardware.model_dump(), "checkpoint_every": checkpoint_every}


def encode_split(tokenizer, split: pl.DataFrame, labels: np.ndarray, max_length: int) -> Encoded:
    return Encoded(tokenizer, split["text"].to_list(), split["text_pair"].to_list(), labels, max_length)


def train_split(store, examples_trial: str) -> pl.DataFrame:
    """The training examples of an `examples` trial, in example-id order."""
    examples = store.read_shard("examples", "examples", examples_trial)
    return examples.filter(pl.col("split") == "train").sort("example_id")
