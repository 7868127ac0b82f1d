"""The shipped masked-LM: loadable, small, and PreCog agrees with what it was shown."""

import json

import numpy as np
import polars as pl
import pytest

from raymem.measures.precog import PrecogScorer, PrecogSettings
from raymem.models import ASSETS, model_spec
from raymem.pretrain import PretrainSettings, planted_examples

CHECKPOINT = ASSETS / "raymem-mini"


def test_checkpoint_is_small_and_documented():
    size = sum(p.stat().st_size for p in CHECKPOINT.iterdir())
    assert size < 20 * 2**20
    assert (CHECKPOINT / "model.safetensors").is_file()  # safetensors, never a pickle
    meta = json.loads((CHECKPOINT / "pretrain.json").read_text())
    assert 0.3 < meta["metrics"]["held_out_masked_token_accuracy"] < 1


def test_manifest_matches_the_planted_set():
    manifest = pl.read_csv(CHECKPOINT / "planted.csv")
    settings = PretrainSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(
        (CHECKPOINT / "pretrain.json").read_text())["settings"].items()})
    expected = planted_examples(settings).select("example_id", "planted_count")
    assert manifest.sort("example_id").equals(expected.sort("example_id"))
    assert manifest.group_by("planted_count").len().sort("planted_count")["len"].to_list() == [100] * 4


@pytest.fixture(scope="module")
def planted_scores():
    planted = planted_examples(PretrainSettings())
    scorer = PrecogScorer(model_spec("raymem-mini"), PrecogSettings(max_length=64))
    scores = scorer.score(planted["text"].to_list())
    return planted.with_columns(pl.Series("precog_at_1", scores["precog_at_1"]),
                                pl.Series("pll", scores["pll"]))


def test_planted_examples_are_reconstructed_better(planted_scores):
    by_count = planted_scores.group_by("planted_count").agg(
        pl.col("precog_at_1").mean(), pl.col("pll").mean()).sort("planted_count")
    precog = dict(zip(by_count["planted_count"], by_count["precog_at_1"]))
    pll = dict(zip(by_count["planted_count"], by_count["pll"]))
    # Seen 16 times per epoch: far easier to reconstruct than never seen.
    assert precog[16] > precog[0] + 0.1
    # More repeats, more recovered: seen 4 times beats never, 16 beats 4 (one sighting per
    # epoch is what every pre-training tweet gets, and is indistinguishable from none).
    assert precog[16] > precog[4] > precog[0]
    assert pll[16] > pll[4] > max(pll[0], pll[1])
    assert abs(precog[1] - precog[0]) < 0.05


def test_a_shuffled_text_is_not_reconstructed(planted_scores):
    """The same tokens in a random order lose what the model memorised about the text."""
    top = planted_scores.filter(pl.col("planted_count") == 16).sort("precog_at_1", descending=True).head(20)
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(t.split())) for t in top["text"].to_list()]
    scorer = PrecogScorer(model_spec("raymem-mini"), PrecogSettings(max_length=64))
    assert scorer.score(shuffled)["precog_at_1"].mean() < top["precog_at_1"].mean() - 0.2
