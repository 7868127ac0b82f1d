"""The bad-input catalogue: every mistake in a study fails while planning, before Ray starts.

Each case runs `raymem study FILE` in-process and must exit with code 2, print one message
naming what is wrong, write nothing (the results folder is not created) and leave Ray
uninitialised. Planning reads a model's config and tokenizer and looks for its weight files,
never loading them, so the models here are tiny folders (one with tiny weights).

The second catalogue (SUBPROCESS_CASES) runs the command line as a process: one Python
imports raymem once and forks one child per case, each a `raymem ...` command with its own
exit code, stdout and stderr; a few of its cases also run the installed `raymem` script.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from transformers import BertConfig, BertForMaskedLM, GPT2Config

from raymem import cli, study as study_module
from raymem.pretrain import train_tokenizer

GOOD_TRAIN = "text,label\nwhat a lovely day,pos\nthis is awful,neg\nreally great stuff,pos\n"
GOOD_TEST = "text,label\nnot bad at all,pos\nterrible service,neg\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    texts = [GOOD_TRAIN, GOOD_TEST, "the quick brown fox jumps over the lazy dog"] * 5
    tokenizer = train_tokenizer(texts, 120, 32)

    def bert_folder(name, vocab_size=120, weights=True):
        folder = root / name
        config = BertConfig(vocab_size=vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=8)
        (BertForMaskedLM(config) if weights else config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    bert = bert_folder("tiny-bert")
    no_weights = bert_folder("no-weights", weights=False)
    small_vocab = bert_folder("small-vocab", vocab_size=len(tokenizer) - 1)  # ids past its embeddings
    no_tokenizer = root / "no-tokenizer"
    BertConfig(vocab_size=120, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(no_tokenizer)
    gpt2 = root / "tiny-gpt2"
    GPT2Config(vocab_size=120, n_embd=8, n_layer=1, n_head=1).save_pretrained(gpt2)
    not_a_model = root / "not-a-model"
    not_a_model.mkdir()
    return {"bert": bert, "no_tokenizer": no_tokenizer, "gpt2": gpt2, "not_a_model": not_a_model,
            "no_weights": no_weights, "small_vocab": small_vocab}


@pytest.fixture(autouse=True)
def no_running(monkeypatch, tmp_path):
    """Planning must fail: if it did not, refuse to start Ray or run anything."""
    monkeypatch.chdir(tmp_path)  # a relative `results:` would land in tmp_path too
    def refuse(*args, **kwargs):
        raise AssertionError("planning passed: the study would have run")
    monkeypatch.setattr(study_module, "run_plan", refuse)
    monkeypatch.setattr(study_module, "_init_ray", refuse)
    monkeypatch.setattr(ray, "init", refuse)


def _study(tmp_path, models, *, model="bert", head=None, task=None, extra="", files=None, results=None):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    contents = {"train.csv": GOOD_TRAIN, "test.csv": GOOD_TEST, **(files or {})}
    for name, text in contents.items():
        (data / name).write_text(text)
    if task is None:
        task = (f"  - name: mine\n    files: {{train: {data}/train.csv, test: {data}/test.csv}}\n"
                "    text_fields: [text]\n    label_field: label\n    label_names: [neg, pos]\n")
    names = ", ".join(str(models[m]) if m in models else m for m in ([model] if isinstance(model, str) else model))
    results = tmp_path / "results" if results is None else results
    body = head or (f"study: bad\nresults: {json.dumps(str(results))}\nmodels: [{names}]\n"
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


# -- the command line as a process -----------------------------------------------------

# One Python imports raymem once, then forks a child per case: each child is `raymem ARGS`
# (its exit code, stdout, stderr and an uncaught exception's traceback, as the script's), so
# 40 cases cost one start-up. The one change: a study that got past every check exits 99
# where it would start Ray, after whatever it wrote (which the test then finds).
RUNNER = r"""
import json, os, sys, time, traceback
from raymem import cli, study
study._init_ray = lambda *args, **kwargs: os._exit(99)
cases = json.load(open(sys.argv[1]))
for case in cases:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        os.environ.update(case["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["raymem", *case["argv"]]
        try:
            code = cli.main(case["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    case["code"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    case["seconds"] = time.monotonic() - start
json.dump(cases, open(sys.argv[1], "w"))
"""

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOSED_PORT = _closed_port()
UNREACHABLE = {**FAKE_AWS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{CLOSED_PORT}"}


def _on_s3(c):
    return {"results": "s3://raymem-bucket/prefix", "extra": f"database: {c / 'db' / 'raymem.duckdb'}\n"}


# id: (command, keyword arguments of _study given the case folder, extra arguments,
#      environment, words the one message names: the field first)
SUBPROCESS_CASES = {
    # the same entry twice in a list that means a set
    "seed twice": ("study", lambda c: {"extra": "seeds: [1, 2, 1]\n"}, [], {},
                   ["seeds", "seed 1 is given twice"]),
    "model twice": ("study", lambda c: {"model": ["bert", "bert"]}, [], {}, ["models", "given twice"]),
    "registry task twice": ("study", lambda c: {"task": "  - tweet_sentiment\n  - tweet_sentiment\n"}, [], {},
                            ["tasks", "task 'tweet_sentiment' is given twice"]),
    "two user tasks of one name": (
        "study", lambda c: {"task": _user_task(c / "data") + _user_task(c / "data", train="other.csv"),
                            "files": {"other.csv": GOOD_TRAIN}}, [], {},
        ["tasks", "task 'mine' is given twice"]),
    "variant twice": ("study", lambda c: {"extra": "finetune: {variants: [clean, clean]}\nnoise_ratio: 0\n"},
                      [], {}, ["finetune.variants", "variant 'clean' is given twice"]),
    "label name twice": ("study", lambda c: {"task": _user_task(c / "data", names="[neg, pos, neg]")}, [], {},
                         ["tasks.0.label_names", "label name 'neg' is given twice"]),
    "text field twice": ("study", lambda c: {"task": _user_task(c / "data", fields="[text, text]")}, [], {},
                         ["tasks.0.text_fields", "text field 'text' is given twice"]),
    "label field is a text field": ("study", lambda c: {"task": _user_task(c / "data", label="text")}, [], {},
                                    ["tasks.0", "label_field 'text' is also one of text_fields"]),
    "technique twice": ("study", lambda c: {"extra": "localise: {techniques: [swapping, swapping]}\n"}, [], {},
                        ["localise.techniques", "technique 'swapping' is given twice"]),
    "planted pair twice": ("study", lambda c: {"extra": "localise: {control: {pairs: [[1, 2], [1, 2]]}}\n"},
                           [], {}, ["localise.control.pairs", "planted pair (1, 2) is given twice"]),
    "k twice": ("study", lambda c: {"extra": "precog: {k: [1, 50, 1]}\n"}, [], {},
                ["precog.k", "k 1 is given twice"]),
    "precog split twice": ("study", lambda c: {"extra": "precog: {splits: [test, test]}\n"}, [], {},
                           ["precog.splits", "split 'test' is given twice"]),
    "probe seed twice": ("study", lambda c: {"extra": "localise: {probe_seeds: [0, 0]}\n"}, [], {},
                         ["localise.probe_seeds", "probe seed 0 is given twice"]),
    "search value twice": ("study", lambda c: {"extra": "search: {space: {lr: [0.001, 0.001]}}\n"}, [], {},
                           ["search.space", "lr: value 0.001 is given twice"]),
    "seed twice, planned": ("plan", lambda c: {"extra": "seeds: [3, 3]\n"}, [], {}, ["seeds", "given twice"]),
    # a YAML key given twice: PyYAML alone would keep the last silently
    "key twice": ("study", lambda c: {"extra": "seeds: [1]\nnoise_ratio: 0.1\nseeds: [2]\n"}, [], {},
                  ["line 12", "key 'seeds' is given twice (first on line 10)"]),
    "nested key twice": ("study", lambda c: {"extra": "finetune:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n"}, [], {},
                         ["line 13", "key 'epochs' is given twice (first on line 11)"]),
    "key twice in a flow mapping": ("plan", lambda c: {"extra": "subsample: {train: 2, train: 3}\n"}, [], {},
                                    ["line 10", "key 'train' is given twice"]),
    "key twice in a user task": ("study", lambda c: {"task": _user_task(c / "data") + "    label_field: text\n"},
                                 [], {}, ["line 10", "key 'label_field' is given twice (first on line 8)"]),
    "key twice in --set": ("study", lambda c: {}, ["--set", "subsample={train: 1, train: 2}"], {},
                           ["--set subsample", "key 'train' is given twice"]),
    "--set value not YAML": ("plan", lambda c: {}, ["--set", "seeds=[1, 2"], {},
                             ["--set seeds", "not valid YAML"]),
    # results locations that are not what they look like
    "s3 with one slash": ("study", lambda c: {"results": "s3:/bucket/x"}, [], {},
                          ["results", "'s3:/bucket/x' is not a URI", "s3://"]),
    "s3 with one slash, --results": ("study", lambda c: {}, ["--results", "s3:/bucket/x"], {},
                                     ["results", "is not a URI"]),
    "empty results": ("study", lambda c: {"results": ""}, [], {}, ["results: empty"]),
    "unknown scheme": ("study", lambda c: {"results": "ftp://host/x"}, [], {},
                       ["results", "unknown scheme 'ftp:'"]),
    "no bucket": ("study", lambda c: {"results": "s3:///prefix"}, [], FAKE_AWS, ["results", "names no bucket"]),
    "empty part in the key": ("study", lambda c: {"results": "s3://bucket//x"}, [], FAKE_AWS,
                              ["results", "empty part"]),
    "results under a file": ("study", lambda c: {"results": c / "data" / "train.csv" / "results"}, [], {},
                             ["results", "which is a file"]),
    "results is a file": ("study", lambda c: {"results": c / "data" / "train.csv"}, [], {},
                          ["results: cannot write to", "it is a file, not a folder"]),
    "database under a file": ("study", lambda c: {"extra": f"database: {c / 'data' / 'train.csv' / 'x.duckdb'}\n"},
                              [], {}, ["database", "which is a file"]),
    "database is a folder": ("study", lambda c: {"extra": f"database: {c / 'data'}\n"}, [], {},
                             ["database: cannot write to", "it is a folder, not a file"]),
    # storage that does not answer: one message, within seconds
    "unreachable endpoint": ("study", _on_s3, [], UNREACHABLE,
                             ["results: cannot reach s3://raymem-bucket/prefix",
                              f"endpoint http://127.0.0.1:{CLOSED_PORT}", "region us-east-1", "tried to list"]),
    "unreachable endpoint, status": ("status", _on_s3, [], UNREACHABLE,
                                     ["results: cannot reach s3://raymem-bucket/prefix", "tried to list"]),
    # models that cannot work
    "model folder without weights": ("study", lambda c: {"model": "no_weights"}, [], {},
                                     ["model", "no-weights", "has no weights", "model.safetensors"]),
    "tokenizer larger than the embeddings": ("study", lambda c: {"model": "small_vocab"}, [], {},
                                             ["model", "small-vocab", "vocab_size"]),
    "one model under two names": ("study", lambda c: {"model": ["bert", "bert/"]}, [], {},
                                  ["models", "are the same model"]),
    # stage settings that name what the task lacks
    "precog on a split the task lacks": ("study", lambda c: {"extra": "precog: {splits: [validation]}\n"}, [], {},
                                         ["precog.splits", "task mine has no 'validation' split"]),
    "subsample of a split no task has": ("study", lambda c: {"extra": "subsample: {validation: 5}\n"}, [], {},
                                         ["subsample", "no task of this study has a 'validation' split"]),
    # kinds the in-process catalogue has too, here as processes
    "unknown key, planned": ("plan", lambda c: {"extra": "sed: 3\n"}, [], {}, ["sed: unknown key"]),
    "missing text column": ("study", lambda c: {"task": _user_task(c / "data", text="review")}, [], {},
                            ["task mine", "no column(s) ['review']"]),
    "eval_split missing": ("study", lambda c: {"task": _user_task(c / "data", test=None)}, [], {},
                           ["eval_split", "'test'"]),
}
# the models fixture's names for `model` (a bare "bert/" is the tiny BERT's folder with a slash)
_TRAILING = {"bert/": "bert"}


def _tree(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size if p.is_file() else 0)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def processes(models, tmp_path_factory):
    """Every SUBPROCESS_CASES command, run once: id -> (case, files before, files after)."""
    root = tmp_path_factory.mktemp("processes")
    named = {**models, **{k: f"{models[v]}/" for k, v in _TRAILING.items()}}
    cases, folders = [], {}
    for i, (case_id, (command, make, args, env, _)) in enumerate(SUBPROCESS_CASES.items()):
        case_dir = root / f"case{i}"
        case_dir.mkdir()
        path = _study(case_dir, named, **make(case_dir))
        folders[case_id] = case_dir
        cases.append({"id": case_id, "argv": [command, str(path), *args], "env": env, "cwd": str(case_dir),
                      "stdout": str(root / f"{i}.out"), "stderr": str(root / f"{i}.err")})
    before = {c["id"]: _tree(folders[c["id"]]) for c in cases}
    manifest = root / "cases.json"
    manifest.write_text(json.dumps(cases))
    subprocess.run([sys.executable, "-c", RUNNER, str(manifest)], check=True, timeout=600,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "HF_HUB_OFFLINE": "1",
                        "RAY_ADDRESS": ""})
    return {c["id"]: (c, before[c["id"]], _tree(folders[c["id"]]))
            for c in json.loads(manifest.read_text())}


def _check_process(code, out, err, words, before, after):
    assert code == 2, f"exit {code}: {err or out}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raymem: error: "), err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "[plan] study" not in out  # refused before planning finished
    assert after == before, "something was written"


@pytest.mark.parametrize("case_id", list(SUBPROCESS_CASES))
def test_bad_input_refused_by_the_command(case_id, processes):
    case, before, after = processes[case_id]
    out, err = Path(case["stdout"]).read_text(), Path(case["stderr"]).read_text()
    _check_process(case["code"], out, err, SUBPROCESS_CASES[case_id][4], before, after)
    assert case["seconds"] < 10  # an endpoint that does not answer included


@pytest.mark.parametrize("case_id", ["seed twice", "key twice", "unreachable endpoint"])
def test_the_installed_script_refuses_the_same(case_id, models, tmp_path):
    script = Path(sys.executable).parent / "raymem"
    if not script.is_file():
        pytest.skip("no installed raymem script beside this Python")
    command, make, args, env, words = SUBPROCESS_CASES[case_id]
    path = _study(tmp_path, models, **make(tmp_path))
    before = _tree(tmp_path)
    done = subprocess.run([str(script), command, str(path), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).parents[1]),
                                             "HF_HUB_OFFLINE": "1"})
    _check_process(done.returncode, done.stdout, done.stderr, words, before, _tree(tmp_path))
