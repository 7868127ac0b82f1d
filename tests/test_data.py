"""The examples table of a (task, model): subsample, noisy labels, planted counts, confounders."""

import math

import numpy as np
import polars as pl
import pytest

from raymem.config import Study
from raymem.data import prepare_examples, subsample, word_rarity
from raymem.models import ModelSpec, load_tokenizer
from raymem.tasks import load_task

SUBSAMPLE = {"train": 300, "validation": 60, "test": 120}


@pytest.fixture(scope="module")
def sentiment():
    return load_task("tweet_sentiment")


@pytest.fixture(scope="module")
def model(tiny_mlm):
    return ModelSpec("tiny", str(tiny_mlm))


@pytest.fixture(scope="module")
def examples(sentiment, model):
    spec, splits = sentiment
    study = Study(study="t", tasks=["tweet_sentiment"], models=["tiny"], subsample=SUBSAMPLE,
                  subsample_strategy="first")
    return prepare_examples(study, spec, splits, model)


def test_subsample_takes_the_first_n_by_example_id():
    df = pl.DataFrame({"example_id": ["c", "a", "d", "b"], "text": ["C", "A", "D", "B"]})
    assert subsample(df, 2)["example_id"].to_list() == ["a", "b"]
    assert subsample(df, 2)["text"].to_list() == ["A", "B"]  # rows stay whole
    assert subsample(df, None)["example_id"].to_list() == ["a", "b", "c", "d"]
    assert subsample(df, 10).height == 4
    # Independent of the input order.
    assert subsample(df.reverse(), 3).equals(subsample(df, 3))


def test_stratified_subsample_keeps_class_shares_deterministically():
    # 60% class 0, 30% class 1, 10% class 2; ids in a shuffled order
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    ids = [f"{i:04d}" for i in rng.permutation(1000)]
    df = pl.DataFrame({"example_id": ids, "label": labels})
    for n, expected in ((100, {0: 60, 1: 30, 2: 10}), (7, {0: 4, 1: 2, 2: 1}), (1, {0: 1})):
        got = subsample(df, n, "stratified")
        assert got.height == n
        assert dict(got["label"].value_counts().iter_rows()) == expected
        # the first examples of each class by id, whatever the input order
        for label, count in expected.items():
            first = sorted(df.filter(pl.col("label") == label)["example_id"].to_list())[:count]
            assert sorted(got.filter(pl.col("label") == label)["example_id"].to_list()) == first
        assert subsample(df.sample(fraction=1, shuffle=True, seed=3), n, "stratified").equals(got)
    # `first` can leave a class nearly out; stratified does not
    skewed = df.sort("label").with_columns(pl.Series("example_id", [f"{i:04d}" for i in range(1000)]))
    assert subsample(skewed, 100, "first")["label"].unique().to_list() == [0]
    assert sorted(subsample(skewed, 100, "stratified")["label"].unique().to_list()) == [0, 1, 2]


def test_stratified_is_the_default_and_enters_the_examples_id_only_then():
    from raymem.stages.examples import examples_trial

    stratified = Study(study="t", tasks=["tweet_sentiment"], subsample={"train": 10})
    first = Study(study="t", tasks=["tweet_sentiment"], subsample={"train": 10}, subsample_strategy="first")
    assert stratified.subsample_strategy == "stratified"
    task, model = "tweet_sentiment", "bert-base-cased"
    assert "subsample_strategy" not in examples_trial(first, task, model, "/r").params
    assert examples_trial(stratified, task, model, "/r").trial_id != examples_trial(first, task, model, "/r").trial_id


def test_examples_table_shape(examples, sentiment):
    assert examples.columns == ["task", "model", "split", "example_id", "text", "text_pair",
                                "label", "original_label", "noisy", "planted_count", "n_tokens",
                                "rarity", "annotator_confidence"]
    assert set(examples["task"]) == {"tweet_sentiment"} and set(examples["model"]) == {"tiny"}
    sizes = dict(examples.group_by("split").len().iter_rows())
    assert sizes == SUBSAMPLE
    _, splits = sentiment
    for split, n in SUBSAMPLE.items():
        want = splits[split].sort("example_id").head(n)
        got = examples.filter(pl.col("split") == split)
        assert got["example_id"].to_list() == want["example_id"].to_list()
        assert got["original_label"].to_list() == want["label"].to_list()
        assert got["text"].to_list() == want["text"].to_list()
    assert examples["example_id"].n_unique() == examples.height


def test_noisy_only_in_train_and_means_label_changed(examples):
    assert (examples["noisy"] == (examples["label"] != examples["original_label"])).all()
    others = examples.filter(pl.col("split") != "train")
    assert not others["noisy"].any()
    assert (others["label"] == others["original_label"]).all()
    train = examples.filter(pl.col("split") == "train")
    for c in range(3):
        members = train.filter(pl.col("original_label") == c)
        assert members["noisy"].sum() == round(0.15 * members.height) > 0


def test_noise_ratio_zero_gives_no_noisy_examples(sentiment, model):
    spec, splits = sentiment
    study = Study(study="t", tasks=["tweet_sentiment"], noise_ratio=0,
                  subsample={"train": 50, "test": 20, "validation": 10})
    df = prepare_examples(study, spec, splits, model)
    assert not df["noisy"].any() and (df["label"] == df["original_label"]).all()


def test_train_min_annotator_confidence_keeps_agreed_training_examples(sentiment, model, examples):
    spec, splits = sentiment
    study = Study(study="t", tasks=["tweet_sentiment"], subsample=SUBSAMPLE, subsample_strategy="first",
                  train_min_annotator_confidence=1.0)
    agreed = prepare_examples(study, spec, splits, model)
    train = agreed.filter(pl.col("split") == "train")
    assert train.height == SUBSAMPLE["train"] and (train["annotator_confidence"] == 1.0).all()
    # The first n agreed tweets by example id, not the agreed part of the usual first n.
    want = splits["train"].filter(pl.col("annotator_confidence") >= 1.0).sort("example_id")
    assert train["example_id"].to_list() == want["example_id"].head(SUBSAMPLE["train"]).to_list()
    assert (examples.filter(pl.col("split") == "train")["annotator_confidence"] < 1.0).any()
    for c in range(3):  # noise is planted as usual, now into agreed labels only
        members = train.filter(pl.col("original_label") == c)
        assert members["noisy"].sum() == round(0.15 * members.height) > 0
    # Only training is filtered: the evaluation splits hold the usual examples (rarity, a
    # statistic over the task's words, moves with the training texts).
    for split in ("validation", "test"):
        columns = ["example_id", "text", "label", "noisy", "planted_count", "annotator_confidence"]
        assert agreed.filter(pl.col("split") == split).select(columns).equals(
            examples.filter(pl.col("split") == split).select(columns))


def test_planted_counts_come_from_the_model(examples, tiny_mlm):
    planted = pl.read_csv(tiny_mlm / "planted.csv", schema_overrides={"example_id": pl.Utf8})
    assert planted.height == 40  # 4 counts x 10 per count in the fixture
    want = dict(planted.iter_rows())
    got = dict(examples.select("example_id", "planted_count").iter_rows())
    # The planted set is the first test tweets by example id: all in the test subsample.
    test_ids = set(examples.filter(pl.col("split") == "test")["example_id"])
    assert set(want) <= test_ids
    for eid, count in got.items():
        assert count == want.get(eid, 0)
    assert sorted(set(got.values())) == [0, 1, 4, 16]
    assert examples["planted_count"].dtype == pl.Int64


def test_a_model_without_planted_file_gives_zero(sentiment, tiny_mlm, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_mlm, copy)
    (copy / "planted.csv").unlink()
    spec, splits = sentiment
    study = Study(study="t", tasks=["tweet_sentiment"], subsample={"train": 20, "test": 20,
                                                                   "validation": 5})
    df = prepare_examples(study, spec, splits, ModelSpec("copy", str(copy)))
    assert (df["planted_count"] == 0).all()


def test_n_tokens(examples, model):
    assert (examples["n_tokens"] > 0).all()
    tok = load_tokenizer(model)
    sample = examples.head(20)
    for text, n in zip(sample["text"].to_list(), sample["n_tokens"].to_list()):
        assert n == len(tok(text, add_special_tokens=False)["input_ids"])


def test_pair_task_counts_tokens_of_both_texts(model, tmp_path):
    (tmp_path / "train.csv").write_text("a,b,label\ngood day,nice weather,y\nbad day,rain,n\n")
    (tmp_path / "test.csv").write_text("a,b,label\nsunny,warm,y\n")
    spec, splits = load_task({"name": "p", "files": {"train": str(tmp_path / "train.csv"),
                                                     "test": str(tmp_path / "test.csv")},
                              "text_fields": ["a", "b"], "label_field": "label",
                              "label_names": ["n", "y"]})
    study = Study(study="t", tasks=["x"], noise_ratio=0)
    df = prepare_examples(study, spec, splits, model)
    tok = load_tokenizer(model)
    for a, b, n in df.select("text", "text_pair", "n_tokens").iter_rows():
        assert n == len(tok(a, add_special_tokens=False)["input_ids"]) + \
            len(tok(b, add_special_tokens=False)["input_ids"])


def test_word_rarity_is_higher_for_rarer_words():
    r = word_rarity(pl.Series(["Common common", "common RARE", "", "..."]))
    # Word counts: common 3, rare 1 (case-insensitive), 4 words in all.
    assert r[0] == pytest.approx(-math.log(3 / 4))
    assert r[1] == pytest.approx((-math.log(3 / 4) - math.log(1 / 4)) / 2)
    assert r[1] > r[0]
    assert r[2] is None and r[3] is None  # no words, no rarity
    assert r.dtype == pl.Float64


def test_rarity_in_the_examples_table(examples):
    assert examples["rarity"].null_count() < examples.height * 0.01
    assert (examples["rarity"].drop_nulls() > 0).all()


def test_precog_scores_in_its_reservation_while_the_sweep_holds_every_other_cpu(examples, model):
    """A Ray Data pool reserves nothing: beside a sweep that holds every free CPU (and has
    its next trial waiting for one), it would wait for the sweep's end. In the placement
    group `reserve_pool` asked for first, it scores at once, and the waiting trial starts
    once the group is removed."""
    import time

    import ray
    from ray.util.placement_group import remove_placement_group

    from raymem.config import PrecogConfig
    from raymem.data import precog_rows, reserve_pool

    cfg = PrecogConfig(k=[1], max_length=16, actors={"cpus": 1, "min_size": 1, "max_size": 1})
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        reserved = reserve_pool(cfg.actors)
        ray.get(reserved.ready(), timeout=30)

        @ray.remote(num_cpus=1)
        def trial(seconds):
            time.sleep(seconds)
            return time.time()

        running = trial.remote(120)  # the sweep's trial on the other CPU
        time.sleep(1)
        waiting = trial.remote(0)  # its next trial, asking for a CPU
        test = examples.filter(pl.col("split") == "test").head(24)
        start = time.time()
        rows = precog_rows(test, model, cfg, reserved=reserved)
        assert time.time() - start < 60 and rows.height == 24
        assert ray.wait([waiting], timeout=0)[0] == []  # no CPU was free for it meanwhile
        remove_placement_group(reserved)
        assert ray.get(waiting, timeout=30) > start
        ray.cancel(running, force=True)
    finally:
        ray.shutdown()
