"""Trial ids are the contract with results already on disk: a rerun finds finished work by
them. These are the ids planned for studies/demo_localise.yaml. Every one changed when the
definitions were aligned with the original code: AdamW weight decay 0.01 (every training
trial and all that reads it), each localisation trial naming the noisy checkpoint it
compares, and retraining (one trial per start layer, warm-up 10%); probing's changed again
with its label probes (`probe_label_events`, and the summaries that read it). All changed once
more when the examples trial took the fingerprints of the task data and the model files
(`inputs`), which every trial reads through it. Probing's changed again when layer 1 was
scored against the pre-trained model's layer 1 (`probe_baseline`), and every training trial's
when the training settings took the batch order (`finetune.batch_order`); the control
models' (and the pairs that read them) when they took `memorised_f1`. A change here is a change of what a finished
study's results mean: make it on purpose, then write the file again from the plan's ids
(per stage, sorted, `json.dumps(..., indent=1)`) as the first test compares them."""

import json
from collections import Counter
from pathlib import Path

from raymem.config import load_study
from raymem.study import make_plan
from raymem.trial import Trial, trial_id

REPO = Path(__file__).resolve().parent.parent
PINNED = Path(__file__).parent / "data" / "demo_localise_trial_ids.json"


def test_demo_localise_trial_ids_are_pinned():
    plan = make_plan(load_study(REPO / "studies" / "demo_localise.yaml"), log=lambda *_: None)
    planned: dict[str, list[str]] = {}
    for trial in plan.trials:
        planned.setdefault(trial.stage, []).append(trial.trial_id)
    assert {stage: sorted(ids) for stage, ids in planned.items()} == json.loads(PINNED.read_text())
    assert len({t.trial_id for t in plan.trials}) == len(plan.trials)  # no two trials share an id


def test_trial_needs_name_planned_trials_of_earlier_stages():
    plan = make_plan(load_study(REPO / "studies" / "demo_localise.yaml"), log=lambda *_: None)
    position = {t.trial_id: i for i, t in enumerate(plan.trials)}
    for i, trial in enumerate(plan.trials):
        assert all(position[need] < i for need in trial.needs), trial.label()
    needs = Counter(t.stage for t in plan.trials if not t.needs)
    assert needs == {"examples": 2}  # every other trial reads something planned before it


def test_trial_id_is_a_hash_of_stage_and_parameters_only():
    a = Trial("finetune", {"seed": 1, "task": "t"}, "s", "/r", runtime={"gpus": 1})
    b = Trial("finetune", {"task": "t", "seed": 1}, "other-study", "/elsewhere", runtime={"gpus": 0.25})
    assert a.trial_id == b.trial_id == trial_id("finetune", {"seed": 1, "task": "t"})
    assert a.trial_id.startswith("finetune-") and len(a.trial_id) == len("finetune-") + 12
    assert Trial("finetune", {"seed": 2, "task": "t"}, "s", "/r").trial_id != a.trial_id


def test_a_user_task_of_the_study_can_be_the_control_setups_auxiliary_task(tiny_mlm, tmp_path):
    import yaml

    data = Path(__file__).parent / "data" / "user_task"
    reviews = {"name": "reviews", "text_fields": ["review"], "label_field": "verdict",
               "label_names": ["bad", "good"],
               "files": {s: str(data / f"{s}.csv") for s in ("train", "validation", "test")}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "aux", "results": str(tmp_path / "results"), "models": [str(tiny_mlm)],
        "tasks": ["tweet_sentiment", reviews], "seeds": [1], "subsample": {"train": 40, "test": 10},
        "precog": {"enabled": False}, "finetune": {"epochs": 1},
        "localise": {"enabled": True, "control": {"enabled": True, "auxiliary_task": "reviews"}}}))
    plan = make_plan(load_study(path), log=lambda *_: None)
    examples = {t.params["task"]: t.trial_id for t in plan.of_stage("examples")}
    controls = plan.of_stage("control")
    assert controls and {t.params["task"] for t in controls} == {"tweet_sentiment"}
    assert {t.params["auxiliary_examples_trial"] for t in controls} == {examples["reviews"]}
    assert {t.params["auxiliary_n_labels"] for t in controls} == {2}
    assert all(examples["reviews"] in t.needs for t in controls)


def test_an_unknown_auxiliary_task_is_named(tiny_mlm, tmp_path):
    import pytest
    import yaml

    from raymem.errors import ConfigError

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "aux", "results": str(tmp_path / "results"), "models": [str(tiny_mlm)],
        "tasks": ["tweet_sentiment"], "seeds": [1], "precog": {"enabled": False},
        "localise": {"enabled": True, "control": {"enabled": True, "auxiliary_task": "tweet_polarty"}}}))
    with pytest.raises(ConfigError, match=r"localise.control.auxiliary_task: unknown task 'tweet_polarty' "
                                          r"\(did you mean 'tweet_polarity'\?\)"):
        make_plan(load_study(path), log=lambda *_: None)


def test_a_trial_travels_to_tune_as_plain_data_and_comes_back_the_same():
    plan = make_plan(load_study(REPO / "studies" / "demo_localise.yaml"), log=lambda *_: None)
    for trial in plan.trials:
        config = trial.to_config()
        json.dumps(config)  # plain data: Tune saves it without pickling an object
        back = Trial.from_config(json.loads(json.dumps(config)))
        assert back == trial and back.trial_id == trial.trial_id and back.needs == trial.needs
        assert back.runtime == trial.runtime and back.label() == trial.label()


def _two_task_study(tmp_path, model="raymem-mini"):
    """Two user tasks of the same files in two folders, every stage but the control setup."""
    import shutil

    import yaml

    data = Path(__file__).parent / "data" / "user_task"
    tasks = []
    for name in ("reviews", "opinions"):
        shutil.copytree(data, tmp_path / name, dirs_exist_ok=True)
        tasks.append({"name": name, "text_fields": ["review"], "label_field": "verdict",
                      "label_names": ["bad", "good"],
                      "files": {s: str(tmp_path / name / f"{s}.csv") for s in ("train", "validation", "test")}})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "inputs", "results": str(tmp_path / "results"), "models": [model], "tasks": tasks,
        "seeds": [1], "eval_split": "test", "finetune": {"epochs": 1},
        "counterfactual": {"enabled": True, "n_models": 2}, "localise": {"enabled": True}}))
    return path


def _ids(path) -> dict[str, Trial]:
    return {t.trial_id: t for t in make_plan(load_study(path), log=lambda *_: None).trials}


def _reads(trials: dict[str, Trial], changed: set[str]) -> set[str]:
    """The trials that read any of `changed`, directly or through what they read."""
    out = set(changed)
    for trial in trials.values():  # planned in order: what a trial needs comes before it
        if set(trial.needs) & out:
            out.add(trial.trial_id)
    return out


def test_an_edited_task_file_reruns_exactly_the_trials_that_read_it(tmp_path):
    path = _two_task_study(tmp_path)
    before = _ids(path)
    train = tmp_path / "reviews" / "train.csv"
    train.write_text(train.read_text().replace("The plot made no sense,bad", "The plot made no sense,good"))
    after = _ids(path)
    gone, new = set(before) - set(after), set(after) - set(before)
    examples = {t.trial_id for t in before.values() if t.stage == "examples" and t.params["task"] == "reviews"}
    assert examples and gone == _reads(before, examples)  # its examples, and all that reads them
    assert {before[t].stage for t in gone} == {t.stage for t in before.values()}  # every stage
    assert not any(before[t].params.get("task") == "opinions" for t in gone)  # the other task's stay
    assert len(new) == len(gone)


def test_an_unchanged_task_file_keeps_its_trials(tmp_path):
    path = _two_task_study(tmp_path)
    before = _ids(path)
    (tmp_path / "reviews" / "test.csv").touch()  # a new modification time, the same contents
    assert set(_ids(path)) == set(before)


def test_new_model_weights_rerun_every_trial_of_the_model(tmp_path):
    import shutil

    from raymem.models import ASSETS

    model = tmp_path / "mini"
    shutil.copytree(ASSETS / "raymem-mini", model)
    path = _two_task_study(tmp_path, str(model))
    before = _ids(path)
    (model / "README.md").write_text("notes about the model")  # not an input
    assert set(_ids(path)) == set(before)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one weight's last bit
    weights.write_bytes(bytes(data))
    assert not set(_ids(path)) & set(before)  # every trial reads the model


def _builder_study(tmp_path, task: dict):
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": "hf", "results": str(tmp_path / "results"), "tasks": [task]}))
    return load_study(path)


def _examples_id(study, task: str = "reviews") -> str:
    from raymem.stages.examples import examples_trial

    return examples_trial(study, task, "raymem-mini", study.results).trial_id


def test_a_builder_tasks_data_files_fix_its_trial_ids_by_content(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = {"train": ['{"review": "fine", "verdict": "good"}', '{"review": "awful", "verdict": "bad"}'],
            "test": ['{"review": "great", "verdict": "good"}']}
    for split, lines in rows.items():
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    task = {"name": "reviews", "builder": "json", "text_fields": ["review"], "label_field": "verdict",
            "label_names": ["bad", "good"], "data_files": {s: str(folder / f"{s}.jsonl") for s in rows}}
    before = _examples_id(_builder_study(tmp_path, task))
    (folder / "test.jsonl").touch()  # a new modification time, the same contents
    assert _examples_id(_builder_study(tmp_path, task)) == before
    moved = tmp_path / "moved.jsonl"
    moved.write_text((folder / "test.jsonl").read_text())  # the same contents elsewhere: the same data
    assert _examples_id(_builder_study(tmp_path, {**task, "data_files": {**task["data_files"],
                                                                         "test": str(moved)}})) == before
    (folder / "train.jsonl").write_text((folder / "train.jsonl").read_text().replace('"bad"', '"good"'))
    edited = _examples_id(_builder_study(tmp_path, task))
    assert edited != before
    # the builder reading the files is part of the task's definition
    (folder / "train.csv").write_text("review,verdict\nfine,good\nawful,good\n")
    assert _examples_id(_builder_study(tmp_path, {**task, "builder": "csv", "data_files": {
        "train": str(folder / "train.csv"), "test": str(folder / "test.jsonl")}})) not in (before, edited)


def test_a_user_hub_tasks_ids_follow_its_id_subset_splits_and_revision(tmp_path):
    task = {"name": "reviews", "hf": "nyu-mll/glue", "subset": "sst2", "text_fields": ["sentence"],
            "label_field": "label", "label_names": ["negative", "positive"]}
    base = _examples_id(_builder_study(tmp_path, task))
    assert _examples_id(_builder_study(tmp_path, {**task, "revision": "main"})) == base  # main unless pinned
    changes = [{"revision": "bcd3a1e"}, {"subset": "cola"}, {"hf": "stanfordnlp/sst2", "subset": None},
               {"splits": {"train": "train[:90%]", "test": "validation"}}]
    ids = {_examples_id(_builder_study(tmp_path, {**task, **change})) for change in changes}
    assert len(ids) == len(changes) and base not in ids


def test_a_user_csv_tasks_fingerprint_is_kept():
    # Results on disk name the examples trial by this fingerprint: the `files` source's
    # definition must not change when other sources are added.
    from raymem.tasks import task_fingerprint

    data = Path(__file__).parent / "data" / "user_task"
    task = {"name": "reviews", "files": {s: str(data / f"{s}.csv") for s in ("train", "validation", "test")},
            "text_fields": ["review"], "label_field": "verdict", "label_names": ["bad", "good"]}
    assert task_fingerprint(task) == "c678ebb3f30f6c20"
    assert task_fingerprint("sst2") == "e85b6c7fcbbdc7cf"  # a registry hub task's
