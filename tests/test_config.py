"""The study schema: published defaults, and clear errors that name the file and field."""

from pathlib import Path

import pytest

from raymem.config import Study, load_study
from raymem.errors import ConfigError


STUDIES = sorted((Path(__file__).parents[1] / "studies").glob("*.yaml"))


def test_the_shipped_study_files_are_found():  # an empty glob would skip the next test
    assert len(STUDIES) >= 5


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_file_is_valid(path):
    assert load_study(path).study == path.stem


def _write(tmp_path, text, name="study.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_published_settings(tmp_path):
    study = load_study(_write(tmp_path, "study: s\ntasks: [tweet_sentiment]\n"))
    ft = study.finetune
    assert ft.lr == 1e-5
    assert ft.batch_size == 8
    assert ft.epochs == 50
    assert ft.warmup == 0.1
    assert ft.memorised_f1 == 0.993
    assert ft.variants == ["clean", "noisy"]
    assert study.noise_ratio == 0.15
    assert study.data_seed == 1
    assert study.precog.k == [1, 50]
    assert study.precog.unit == "subword" and study.precog.masking == "single"
    assert study.eval_split == "test"
    assert study.models == ["raymem-mini"]
    assert study.subsample == {}
    assert study.task_names() == ["tweet_sentiment"]


def test_a_full_study_file_loads(tmp_path):
    text = """
study: full-1.0
results: /tmp/somewhere
models: [raymem-mini, minilm]
tasks:
  - tweet_polarity
  - name: reviews
    files: {train: a.csv, test: b.csv}
    text_fields: [review]
    label_field: verdict
    label_names: [bad, good]
seeds: [4, 5]
noise_ratio: 0.2
subsample: {train: 10, test: 5}
precog: {k: [50, 1, 10], actors: {min_size: 1, max_size: 3}}
finetune: {variants: [noisy], lr: 0.001, epochs: 3}
"""
    study = load_study(_write(tmp_path, text))
    assert study.task_names() == ["tweet_polarity", "reviews"]
    assert study.tasks[1].files == {"train": "a.csv", "test": "b.csv"}
    assert study.precog.k == [1, 10, 50]  # sorted
    assert study.precog.actors.max_size == 3
    assert study.finetune.lr == 0.001 and study.finetune.batch_size == 8
    assert study.subsample == {"train": 10, "test": 5}


def test_overrides_replace_file_values(tmp_path):
    path = _write(tmp_path, "study: s\nresults: a\ntasks: [tweet_sentiment]\n")
    assert load_study(path, {"results": "b"}).results == "b"
    study = load_study(path, {"search.enabled": True, "search.space.lr": [0.1], "finetune.lr": 0.5})
    assert study.search.enabled and study.search.space.lr == [0.1] and study.finetune.lr == 0.5
    assert study.search.space.epochs == [10, 20]  # a dotted key changes that key alone


def test_study_is_frozen(tmp_path):
    study = load_study(_write(tmp_path, "study: s\ntasks: [tweet_sentiment]\n"))
    with pytest.raises(Exception):
        study.noise_ratio = 0.5


BAD = [  # (yaml after the valid head, words the message must contain)
    ("bogus: 1", ["bogus: unknown key 'bogus'"]),
    ("finetune: {lrr: 0.1}", ["finetune.lrr: unknown key 'lrr' (did you mean 'lr'?)"]),
    ("precog: {actors: {cpu: 1}}", ["precog.actors.cpu"]),
    ("seeds: one", ["seeds", "valid list"]),
    ("seeds: [1, two]", ["seeds.1", "valid integer"]),
    ("finetune: {lr: fast}", ["finetune.lr", "valid number"]),
    ("finetune: {epochs: 2.5}", ["finetune.epochs"]),
    ("finetune: {lr: 0}", ["finetune.lr", "greater than 0"]),
    ("finetune: {warmup: 1.5}", ["finetune.warmup"]),
    ("finetune: {memorised_f1: 1.2}", ["finetune.memorised_f1"]),
    ("finetune: {variants: [noisy, dirty]}", ["finetune.variants.1"]),
    ("finetune: {variants: []}", ["finetune.variants"]),
    ("noise_ratio: 1.0", ["noise_ratio", "less than 1"]),
    ("noise_ratio: -0.1", ["noise_ratio"]),
    ("eval_split: dev", ["eval_split", "dev"]),
    ("subsample: {train: 0}", ["subsample", "at least 1"]),
    ("subsample: {training: 5}", ["subsample.training"]),
    ("precog: {k: [0, 1]}", ["precog.k", "at least 1"]),
    ("precog: {unit: sentence}", ["precog.unit"]),
    ("precog: {actors: {min_size: 3, max_size: 2}}", ["precog.actors", "below min_size"]),
    ("bin_width: 0", ["bin_width"]),
    ("models: []", ["models"]),
    ("ray: {num_cpus: 0}", ["ray.num_cpus"]),
    # a list that means a set names no entry twice
    ("seeds: [1, 2, 1]", ["seeds", "seed 1 is given twice"]),
    ("models: [raymem-mini, raymem-mini]", ["models", "model 'raymem-mini' is given twice"]),
    ("finetune: {variants: [noisy, noisy]}", ["finetune.variants", "variant 'noisy'"]),
    ("precog: {k: [1, 50, 1]}", ["precog.k", "k 1 is given twice"]),
    ("precog: {splits: [test, test]}", ["precog.splits", "split 'test'"]),
    ("localise: {techniques: [probing, probing]}", ["localise.techniques", "technique 'probing'"]),
    ("localise: {probe_seeds: [1, 1]}", ["localise.probe_seeds", "probe seed 1"]),
    ("localise: {control: {pairs: [[3, 4], [3, 4]]}}", ["localise.control.pairs", "planted pair (3, 4)"]),
    ("search: {space: {epochs: [2, 2]}}", ["search.space", "epochs: value 2 is given twice"]),
    ("search: {space: {batch_size: [8, 16, 8]}}", ["search.space", "batch_size: value 8"]),
]


@pytest.mark.parametrize("extra, words", BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_the_field_and_file(tmp_path, extra, words):
    path = _write(tmp_path, f"study: s\ntasks: [tweet_sentiment]\n{extra}\n")
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for word in words:
        assert word in message


def test_bad_study_name(tmp_path):
    with pytest.raises(ConfigError, match=r"study: String should match pattern"):
        load_study(_write(tmp_path, "study: my study\ntasks: [tweet_sentiment]\n"))


def test_missing_required_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"study\.yaml: tasks: Field required"):
        load_study(_write(tmp_path, "study: s\n"))
    with pytest.raises(ConfigError, match=r"study\.yaml: study: Field required"):
        load_study(_write(tmp_path, "tasks: [tweet_sentiment]\n"))


def test_more_errors_are_counted(tmp_path):
    with pytest.raises(ConfigError, match=r"\(and 2 more\)"):
        load_study(_write(tmp_path, "study: s\ntasks: [tweet_sentiment]\na: 1\nb: 2\nc: 3\n"))


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(_write(tmp_path, "study: [s\ntasks: x\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_study(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_study(_write(tmp_path, ""))
    path = tmp_path / "latin1.yaml"
    path.write_bytes("study: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(path)


USER_TASK = ("tasks:\n  - name: t\n    files: {train: a.csv}\n    text_fields: [text]\n"
             "    label_field: label\n    label_names: [a, b]\n")


def test_a_valid_user_task_passes(tmp_path):
    study = load_study(_write(tmp_path, "study: s\n" + USER_TASK))
    assert study.tasks[0].label_names == ["a", "b"]




@pytest.mark.parametrize("change, words", [
    pytest.param(("label_field: label", "label_field: label\n    bogus: 1"),
                 ["tasks.0.bogus: unknown key 'bogus'"], id="unknown key"),
    pytest.param(("label_field: label", "label_feild: label"),
                 ["tasks.0.label_feild: unknown key 'label_feild' (did you mean 'label_field'?)"],
                 id="misspelt key"),
    pytest.param(("label_names: [a, b]", "label_names: [a]"), ["tasks.0.label_names"],
                 id="one label"),
    pytest.param(("    label_field: label\n", ""), ["tasks.0.label_field", "required"],
                 id="no label field"),
    pytest.param(("{train: a.csv}", "{training: a.csv}"), ["tasks.0.files.training"],
                 id="bad split name"),
])
def test_bad_user_task_names_the_field(tmp_path, change, words):
    path = _write(tmp_path, "study: s\n" + USER_TASK.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_study(path)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("change, words", [
    pytest.param(("label_names: [a, b]", "label_names: [a, b, a]"),
                 ["tasks.0.label_names", "label name 'a' is given twice"], id="label name twice"),
    pytest.param(("text_fields: [text]", "text_fields: [text, text]"),
                 ["tasks.0.text_fields", "text field 'text' is given twice"], id="text field twice"),
    pytest.param(("text_fields: [text]", "text_fields: [label]"),
                 ["tasks.0", "label_field 'label' is also one of text_fields"], id="label read as text"),
])
def test_user_task_lists_name_no_entry_twice(tmp_path, change, words):
    path = _write(tmp_path, "study: s\n" + USER_TASK.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_study(path)
    for word in words:
        assert word in str(info.value)


def test_two_tasks_of_one_name_are_refused(tmp_path):
    other = USER_TASK.replace("tasks:\n", "").replace("a.csv", "b.csv")
    with pytest.raises(ConfigError, match=r"tasks: .*task 't' is given twice"):
        load_study(_write(tmp_path, "study: s\n" + USER_TASK + other))
    with pytest.raises(ConfigError, match=r"tasks: .*task 'tweet_sentiment' is given twice"):
        load_study(_write(tmp_path, "study: s\ntasks: [tweet_sentiment, tweet_polarity, tweet_sentiment]\n"))


@pytest.mark.parametrize("text, words", [
    ("study: s\ntasks: [tweet_sentiment]\nstudy: t\n", ["line 3", "key 'study' is given twice (first on line 1)"]),
    ("study: s\ntasks: [tweet_sentiment]\nfinetune:\n  lr: 0.1\n  lr: 0.2\n", ["line 5", "key 'lr'"]),
    ("study: s\ntasks: [tweet_sentiment]\nsubsample: {train: 5, test: 3, train: 7}\n", ["line 3", "key 'train'"]),
    ("study: s\n" + USER_TASK + "    name: u\n", ["line 8", "key 'name' is given twice (first on line 3)"]),
])
def test_a_key_given_twice_is_refused(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: ")
    for word in words:
        assert word in str(info.value)


def test_yaml_merge_keys_may_still_override():
    from raymem.config import load_yaml

    text = "base: &b {lr: 1, epochs: 2}\nfinetune:\n  <<: *b\n  lr: 3\n"
    assert load_yaml(text)["finetune"] == {"lr": 3, "epochs": 2}


def test_schema_forbids_unknown_keys_in_code_too():
    with pytest.raises(Exception, match="Extra inputs"):
        Study.model_validate({"study": "s", "tasks": ["x"], "nope": 1})


BUILDER_TASK = ("tasks:\n  - name: t\n    builder: json\n    data_files: {train: a.jsonl, test: [b.jsonl, c.jsonl]}\n"
                "    text_fields: [text]\n    label_field: label\n    label_names: [a, b]\n")
HUB_TASK = ("tasks:\n  - name: t\n    hf: nyu-mll/glue\n    subset: sst2\n    revision: v2\n"
            "    splits: {train: 'train[:90%]', test: validation}\n"
            "    text_fields: [sentence]\n    label_field: label\n    label_names: [a, b]\n")


def test_builder_and_hub_user_tasks_pass(tmp_path):
    task = load_study(_write(tmp_path, "study: s\n" + BUILDER_TASK)).tasks[0]
    assert task.builder == "json" and task.data_files == {"train": "a.jsonl", "test": ["b.jsonl", "c.jsonl"]}
    task = load_study(_write(tmp_path, "study: s\n" + HUB_TASK)).tasks[0]
    assert (task.hf, task.subset, task.revision) == ("nyu-mll/glue", "sst2", "v2")
    assert task.splits == {"train": "train[:90%]", "test": "validation"}


@pytest.mark.parametrize("text, words", [
    pytest.param(BUILDER_TASK.replace("builder: json", "builder: jsonl"),
                 ["tasks.0.builder", "'csv', 'json' or 'parquet'"], id="unknown builder"),
    pytest.param(BUILDER_TASK.replace("    builder: json\n", ""),
                 ["tasks.0", "builder and data_files go together"], id="data files without builder"),
    pytest.param(BUILDER_TASK.replace("data_files: {train: a.jsonl, ", "files: {train: a.jsonl}\n    data_files: {"),
                 ["tasks.0", "exactly one of files, data_files (with builder) or hf; got files, data_files"],
                 id="two sources"),
    pytest.param(BUILDER_TASK.replace("{train: a.jsonl, ", "{"), ["tasks.0", "data_files must name a train split"],
                 id="no train split"),
    pytest.param(USER_TASK.replace("label_field", "subset: x\n    label_field"),
                 ["tasks.0", "subset is for hub tasks only (with hf)"], id="subset without hf"),
    pytest.param(HUB_TASK.replace("validation}", "validation, dev: x}"), ["tasks.0.splits.dev"],
                 id="bad hub split name"),
    pytest.param(HUB_TASK.replace("    hf: nyu-mll/glue\n", ""), ["tasks.0", "got none"], id="no source"),
])
def test_bad_builder_or_hub_task_names_the_field(tmp_path, text, words):
    with pytest.raises(ConfigError) as info:
        load_study(_write(tmp_path, "study: s\n" + text))
    for word in words:
        assert word in str(info.value)
