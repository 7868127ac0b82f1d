"""The bad-input catalogue: every mistake in a study fails while planning, before Ray starts.

Each case runs `raymem study FILE` in-process and must exit with code 2, print one message
naming what is wrong, write nothing (the results folder is not created) and leave Ray
uninitialised. Planning needs a model's config and tokenizer, never its weights, so the
models here are tiny folders without weights.
"""

import pytest
import ray
from transformers import BertConfig, GPT2Config

from raymem import cli, study as study_module
from raymem.pretrain import train_tokenizer

GOOD_TRAIN = "text,label\nwhat a lovely day,pos\nthis is awful,neg\nreally great stuff,pos\n"
GOOD_TEST = "text,label\nnot bad at all,pos\nterrible service,neg\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    bert = root / "tiny-bert"
    BertConfig(vocab_size=120, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(bert)
    texts = [GOOD_TRAIN, GOOD_TEST, "the quick brown fox jumps over the lazy dog"] * 5
    train_tokenizer(texts, 120, 32).save_pretrained(bert)
    no_tokenizer = root / "no-tokenizer"
    BertConfig(vocab_size=120, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(no_tokenizer)
    gpt2 = root / "tiny-gpt2"
    GPT2Config(vocab_size=120, n_embd=8, n_layer=1, n_head=1).save_pretrained(gpt2)
    not_a_model = root / "not-a-model"
    not_a_model.mkdir()
    return {"bert": bert, "no_tokenizer": no_tokenizer, "gpt2": gpt2, "not_a_model": not_a_model}


@pytest.fixture(autouse=True)
def no_running(monkeypatch, tmp_path):
    """Planning must fail: if it did not, refuse to start Ray or run anything."""
    monkeypatch.chdir(tmp_path)  # a relative `results:` would land in tmp_path too
    def refuse(*args, **kwargs):
        raise AssertionError("planning passed: the study would have run")
    monkeypatch.setattr(study_module, "run_plan", refuse)
    monkeypatch.setattr(study_module, "_init_ray", refuse)
    monkeypatch.setattr(ray, "init", refuse)


def _study(tmp_path, models, *, model="bert", head=None, task=None, extra="", files=None):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    contents = {"train.csv": GOOD_TRAIN, "test.csv": GOOD_TEST, **(files or {})}
    for name, text in contents.items():
        (data / name).write_text(text)
    if task is None:
        task = (f"  - name: mine\n    files: {{train: {data}/train.csv, test: {data}/test.csv}}\n"
                "    text_fields: [text]\n    label_field: label\n    label_names: [neg, pos]\n")
    model_name = str(models[model]) if model in models else model
    body = head or (f"study: bad\nresults: {tmp_path / 'results'}\nmodels: [{model_name}]\n"
                    f"tasks:\n{task}{extra}")
    path = tmp_path / "study.yaml"
    path.write_text(body)
    return path


def _run(path, capsys):
    code = cli.main(["study", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def _check(tmp_path, code, out, err, words):
    assert code == 2, err
    assert err.startswith("raymem: error: ")
    assert err.count("raymem: error:") == 1 and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert "[plan] study" not in out  # planning did not finish
    assert not (tmp_path / "results").exists()
    assert not ray.is_initialized()


def _user_task(data_dir, train="train.csv", test="test.csv", text="text", label="label",
               names="[neg, pos]", fields=None):
    files = f"{{train: {data_dir}/{train}" + (f", test: {data_dir}/{test}}}" if test else "}")
    return (f"  - name: mine\n    files: {files}\n    text_fields: {fields or f'[{text}]'}\n"
            f"    label_field: {label}\n    label_names: {names}\n")


CASES = {  # id: (keyword arguments of _study, given the data folder; words the message names)
    "unknown task": (lambda d: {"task": "  - tweet_sentimnt\n"},
                     ["unknown task 'tweet_sentimnt' (did you mean 'tweet_sentiment'?)"]),
    "unknown model": (lambda d: {"model": "bert-huge"}, ["unknown model 'bert-huge'"]),
    "not a checkpoint folder": (lambda d: {"model": "not_a_model"}, ["no config.json"]),
    "missing data file": (lambda d: {"task": _user_task(d, train="nope.csv")},
                          ["data file not found", "nope.csv", "mine"]),
    "missing text column": (lambda d: {"task": _user_task(d, text="review")},
                            ["no column(s) ['review']", "train.csv"]),
    "missing label column": (lambda d: {"task": _user_task(d, label="verdict")},
                             ["no column(s) ['verdict']"]),
    "missing second text column": (lambda d: {"task": _user_task(d, fields="[text, context]")},
                                   ["no column(s) ['context']"]),
    "labels outside the label set": (
        lambda d: {"files": {"train.csv": GOOD_TRAIN + "so so,maybe\n"}},
        ["labels outside the label set", "'maybe'", "train.csv"]),
    "empty split": (lambda d: {"files": {"test.csv": "text,label\n"}},
                    ["split 'test'", "is empty"]),
    "unreadable file": (lambda d: {"files": {"bad.parquet": "not parquet"},
                                   "task": _user_task(d, train="bad.parquet")},
                        ["cannot read", "bad.parquet"]),
    "wrong file type": (lambda d: {"files": {"train.txt": "x"},
                                   "task": _user_task(d, train="train.txt")},
                        ["expected a .csv, .parquet or .jsonl"]),
    "empty text": (lambda d: {"files": {"train.csv": GOOD_TRAIN + ",neg\nok then,pos\n,pos\n"}},
                   ["split 'train'", "empty text", "2 example(s), rows 4, 6"]),
    "blank text": (lambda d: {"files": {"train.csv": GOOD_TRAIN + "   ,neg\n"}},
                   ["split 'train'", "empty text"]),
    "duplicated examples": (lambda d: {"files": {"train.csv": GOOD_TRAIN + "this is awful,neg\n"}},
                            ["1 duplicated example(s) in 1 group(s)", "'this is awful' at rows 2, 4"]),
    "duplicates with two labels": (
        lambda d: {"files": {"train.csv": GOOD_TRAIN + "this is awful,pos\nwhat a lovely day,pos\n"}},
        ["2 duplicated example(s) in 2 group(s)",
         "1 of the groups carry two labels, e.g. 'this is awful' labelled neg and pos at rows 2, 4"]),
    "splits leak": (lambda d: {"files": {"test.csv": GOOD_TEST + "this is awful,neg\n"}},
                    ["occurs in both 'train' and 'test'"]),
    "unknown key": (lambda d: {"extra": "sed: 3\n"}, ["sed: unknown key 'sed' (did you mean 'seeds'?)"]),
    "unknown nested key": (lambda d: {"extra": "finetune: {epoch: 3}\n"},
                           ["finetune.epoch: unknown key 'epoch' (did you mean 'epochs'?)"]),
    "typo in a task block": (lambda d: {"task": _user_task(d).replace("text_fields:", "text_field:")},
                             ["tasks.0.text_field: unknown key 'text_field' (did you mean 'text_fields'?)"]),
    "unknown technique": (lambda d: {"extra": "localise: {techniques: [swaping]}\n"},
                          ["localise.techniques", "unknown technique 'swaping' (did you mean 'swapping'?)"]),
    "wrong type": (lambda d: {"extra": "seeds: many\n"}, ["seeds", "valid list"]),
    "bad value": (lambda d: {"extra": "noise_ratio: 1.5\n"}, ["noise_ratio", "less than 1"]),
    "malformed yaml": (lambda d: {"head": "study: [bad\ntasks: x\n"}, ["not valid YAML"]),
    "non-mapping top level": (lambda d: {"head": "- study\n- tasks\n"},
                              ["expected a mapping"]),
    "empty file": (lambda d: {"head": "\n"}, ["expected a mapping"]),
    "precog on a decoder": (lambda d: {"model": "gpt2"},
                            ["precog", "gpt2", "masked-LM"]),
    "noisy variant with noise_ratio 0": (lambda d: {"extra": "noise_ratio: 0\n"},
                                         ["finetune.variants", "noisy", "noise_ratio"]),
    "eval_split missing from a user task": (lambda d: {"task": _user_task(d, test=None)},
                                            ["eval_split", "mine", "'test'"]),
    "annotator agreement the task does not record": (
        lambda d: {"extra": "train_min_annotator_confidence: 1.0\n"},
        ["train_min_annotator_confidence", "task mine", "does not record"]),
    "annotator agreement above 1": (lambda d: {"extra": "train_min_annotator_confidence: 1.5\n"},
                                    ["train_min_annotator_confidence", "less than or equal to 1"]),
    "eval_split validation missing": (lambda d: {"extra": "eval_split: validation\n"},
                                      ["eval_split", "'validation'"]),
    "search without a validation split": (lambda d: {"extra": "search: {enabled: true}\n"},
                                          ["search: task mine has no validation split", "['test', 'train']"]),
    "search space value below 0": (lambda d: {"extra": "search: {space: {lr: [0.001, -1]}}\n"},
                                   ["search.space", "lr: every value must be above 0"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_before_anything_runs(case, tmp_path, models, capsys):
    make, words = CASES[case]
    kwargs = make(tmp_path / "data")
    path = _study(tmp_path, models, **kwargs)
    code, out, err = _run(path, capsys)
    _check(tmp_path, code, out, err, [*words, *([str(path)] if "head" in kwargs else [])])


@pytest.mark.parametrize("setting, words", [
    ("search.enabld=true", ["search.enabld: unknown key 'enabld' (did you mean 'enabled'?)"]),
    ("search", ["--set search: expected KEY=VALUE"]),
    ("seeds.first=1", ["seeds.first: seeds is not a section of settings"]),
])
def test_bad_set_overrides(setting, words, tmp_path, models, capsys):
    path = _study(tmp_path, models, extra="seeds: [1]\n")
    code = cli.main(["study", str(path), "--set", setting])
    out, err = capsys.readouterr()
    _check(tmp_path, code, out, err, words)


def test_missing_study_file(tmp_path, capsys):
    code, out, err = _run(tmp_path / "nope.yaml", capsys)
    _check(tmp_path, code, out, err, ["study file not found", "nope.yaml"])


def test_config_errors_name_the_study_file(tmp_path, models, capsys):
    path = _study(tmp_path, models, extra="seeds: many\n")
    code, out, err = _run(path, capsys)
    _check(tmp_path, code, out, err, [f"{path}: seeds"])


def test_a_good_study_gets_past_planning(tmp_path, models, capsys):
    """The control: the same files without the mistake plan fine (and then would run)."""
    path = _study(tmp_path, models, extra="finetune: {variants: [clean]}\nnoise_ratio: 0\n")
    with pytest.raises(AssertionError, match="planning passed"):
        cli.main(["study", str(path)])
    out = capsys.readouterr().out
    assert "[plan] task mine: train 3, test 2" in out
    assert not (tmp_path / "results").exists()


def test_pair_task_with_empty_second_text(tmp_path, models, capsys):
    files = {"train.csv": "text,context,label\nhello,there,pos\nbye,,neg\n",
             "test.csv": "text,context,label\nhi,you,pos\n"}
    path = _study(tmp_path, models, files=files,
                  task=_user_task(tmp_path / "data", fields="[text, context]"))
    code, out, err = _run(path, capsys)
    _check(tmp_path, code, out, err, ["empty text"])


def test_model_without_tokenizer(tmp_path, models, capsys):
    path = _study(tmp_path, models, model="no_tokenizer")
    code, out, err = _run(path, capsys)
    _check(tmp_path, code, out, err, ["tokenizer", "no-tokenizer"])


def test_registry_model_with_missing_files(tmp_path, models, capsys, monkeypatch):
    from raymem import models as models_module

    monkeypatch.setitem(models_module.REGISTRY, "raymem-mini", lambda: str(tmp_path / "gone"))
    path = _study(tmp_path, models, model="raymem-mini")
    code, out, err = _run(path, capsys)
    _check(tmp_path, code, out, err, ["raymem-mini", "cannot load its config"])


def test_registry_model_with_missing_files_precog_off(tmp_path, models, capsys, monkeypatch):
    from raymem import models as models_module

    monkeypatch.setitem(models_module.REGISTRY, "raymem-mini", lambda: str(tmp_path / "gone"))
    path = _study(tmp_path, models, model="raymem-mini", extra="precog: {enabled: false}\n")
    code, out, err = _run(path, capsys)
    _check(tmp_path, code, out, err, ["raymem-mini"])


def test_gpus_on_a_local_ray_without_cuda_stop_before_the_study(tmp_path, models, monkeypatch):
    from raymem.config import load_study
    from raymem.errors import ConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    local = load_study(_study(tmp_path, models, extra="finetune: {resources: {cpus: 1, gpus: 0.5}}\n"))
    # the same study for a cluster: its GPU nodes may not have joined yet, and that is fine
    cluster = load_study(_study(tmp_path, models,
                                extra="finetune: {resources: {gpus: 0.5}}\nray: {address: 'auto'}\n"))
    with pytest.raises(ConfigError, match=r"finetune\.resources\.gpus: 0.5 GPU .*no CUDA device.*gpus: 0"):
        study_module._check_local_resources(local)
    study_module._check_local_resources(cluster)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # a GPU machine: fine too
    study_module._check_local_resources(local)


@pytest.mark.parametrize("extra, message", [
    # the pool's placement group could never be placed: PreCog would wait forever
    ("precog: {actors: {cpus: 1, min_size: 1, max_size: 3}}\n",
     r"precog\.actors: max_size 3 x 1 CPUs .* this local Ray's 2 CPUs \(ray\.num_cpus\)"),
    ("localise: {resources: {cpus: 4}}\n",
     r"localise\.resources\.cpus: 4 CPUs per trial asked for, more than this local Ray's 2"),
])
def test_more_cpus_than_a_local_ray_has_stop_before_the_study(tmp_path, models, monkeypatch, extra, message):
    from raymem.config import load_study
    from raymem.errors import ConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = load_study(_study(tmp_path, models, extra=extra + "ray: {num_cpus: 2}\n"))
    with pytest.raises(ConfigError, match=message):
        study_module._check_local_resources(local)
    # a cluster grows to what its trials ask for
    study_module._check_local_resources(local.model_copy(update={"ray": local.ray.model_copy(
        update={"address": "auto"})}))


def test_a_precog_pool_holding_every_local_cpu_is_said(tmp_path, models, monkeypatch):
    from raymem.config import load_study

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    said = []
    for max_size in (1, 2):
        study = load_study(_study(tmp_path, models, extra=f"precog: {{actors: {{cpus: 1, max_size: {max_size}}}}}\n"
                                                          "ray: {num_cpus: 2}\n"))
        study_module._check_local_resources(study)  # allowed
        said.append(study_module._precog_holds_every_cpu(study))
    assert said[0] is None and "holds all 2 CPUs" in said[1] and "max_size" in said[1]
