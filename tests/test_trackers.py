"""Experiment trackers: the study file's `trackers` section, the missing-package error, each
trial's tags, and a real Tune sweep logging to MLflow (a local file store) and to W&B
(offline), both in tmp_path."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from raymem.config import Study, Trackers, load_study
from raymem.errors import ConfigError
from raymem.schedule import ReadyFirst
from raymem.trackers import check_trackers, trial_tags, tracker_callbacks
from raymem.trial import Trial


def _study(tmp_path, trackers: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"study: s\nresults: {tmp_path / 'results'}\ntasks: [tweet_sentiment]\n{trackers}")
    return path


def test_trackers_are_off_unless_named_and_take_their_defaults(tmp_path):
    study = load_study(_study(tmp_path, ""))
    assert study.trackers == Trackers() and tracker_callbacks(study.trackers, "s") == []
    study = load_study(_study(tmp_path, "trackers: {mlflow: {}, wandb: {mode: offline}}\n"))
    assert study.trackers.mlflow.tracking_uri is None and study.trackers.mlflow.experiment is None
    assert study.trackers.wandb.mode == "offline" and study.trackers.wandb.project is None


@pytest.mark.parametrize("trackers, words", [
    ("trackers: {mlflow: {tracking_url: file:/tmp/x}}",
     ["trackers.mlflow.tracking_url: unknown key 'tracking_url' (did you mean 'tracking_uri'?)"]),
    ("trackers: {mlflow: {tracking_uri: mlruns}}", ["trackers.mlflow.tracking_uri", "'mlruns' is not a URI"]),
    ("trackers: {wandb: {mode: offlin}}", ["trackers.wandb.mode", "'online', 'offline' or 'disabled'"]),
    ("trackers: {neptune: {}}", ["trackers.neptune: unknown key 'neptune'"]),
])
def test_bad_tracker_settings_name_the_field(tmp_path, trackers, words):
    with pytest.raises(ConfigError) as info:
        load_study(_study(tmp_path, trackers + "\n"))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_stops_the_plan_naming_the_extra(tmp_path, monkeypatch, tracker):
    import importlib.util

    from raymem.study import make_plan

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else find_spec(name, *a))
    study = load_study(_study(tmp_path, f"trackers: {{{tracker}: {{}}}}\n"))
    message = (f"trackers.{tracker}: the {tracker} package is not installed: pip install 'raymem[{tracker}]' "
               f"(or remove trackers.{tracker})")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make_plan(study, log=lambda *_: None)
    check_trackers(Study.model_validate({"study": "s", "tasks": ["t"]}).trackers)  # none named: nothing needed


def test_a_trials_tags_are_its_raymem_identity():
    trial = Trial("localise", {"task": "reviews", "model": "raymem-mini", "seed": 2, "technique": "probing",
                               "pair": "", "examples_trial": "examples-1"}, "s", "/r")
    searcher = ReadyFirst([trial], set(), lambda t: False, None)
    config = searcher.suggest("tune-1")  # the config a Tune trial of raymem carries
    assert trial_tags(config) == {"study": "s", "stage": "localise", "trial_id": trial.trial_id,
                                  "task": "reviews", "model": "raymem-mini", "seed": "2",
                                  "technique": "probing"}
    assert trial_tags({"lr": 1e-5}) == {}  # not a raymem trial (a search candidate)


def _wandb_records(path: Path):
    """The protobuf records of an offline W&B run file: a 7-byte W&B header, then LevelDB's
    log format (32 KiB blocks; records of checksum, length and kind, split across blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.ray
def test_a_sweep_logs_each_trial_to_mlflow_and_wandb_with_its_tags(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    (tmp_path / "trackedstage.py").write_text(FAKE_STAGE)
    (tmp_path / "sweep.py").write_text(SWEEP_SCRIPT)
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rmtr-", dir="/tmp"), "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    for key in ("RAY_ADDRESS", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "sweep.py", str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=400, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failed"] == 0
    ids = report["ids"]  # seed -> raymem trial id

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the file store the study wrote
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("memorisation")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
    for run in runs:
        tags, seed = run.data.tags, run.data.tags["seed"]
        assert {k: tags[k] for k in ("study", "stage", "task", "model", "trial_id")} == {
            "study": "tracked", "stage": "finetune", "task": "reviews", "model": "m", "trial_id": ids[seed]}
        assert run.data.params["seed"] == seed and run.data.params["variant"] == "clean"
        history = client.get_metric_history(run.info.run_id, "accuracy")  # the trial's report, then its end
        assert [m.value for m in history] == [int(seed) / 10] and run.data.metrics["training_iteration"] == 2
        assert run.info.status == "FINISHED" and run.info.run_name.startswith("finetune reviews m seed=")

    folders = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    seen = {}
    for folder in folders:
        (run_file,) = folder.glob("run-*.wandb")
        records = list(_wandb_records(run_file))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        raymem = json.loads(next(i.value_json for i in run.config.update if i.key == "raymem"))
        seen[raymem["seed"]] = raymem["trial_id"]
        assert run.project == "memorisation-wandb" and raymem["stage"] == "finetune" and raymem["task"] == "reviews"
        assert list(run.tags) == ["stage=finetune", "task=reviews", f"seed={raymem['seed']}"]
        assert any(r.WhichOneof("record_type") == "history" for r in records)  # its results were logged
    assert seen == ids


# A stage module the Tune workers import (Ray's worker setup hook points `finetune` at it):
# each trial reports one metric, as a training trial reports its epochs.
FAKE_STAGE = """
import polars as pl
from ray import tune


def setup():
    import raymem.sweep
    raymem.sweep.STAGE_MODULES["finetune"] = "trackedstage"


def run(trial, runtime):
    tune.report({"accuracy": trial.params["seed"] / 10})
    return {"things": pl.DataFrame({"thing": [trial.params["seed"]]})}
"""
SWEEP_SCRIPT = """
import json, sys
from raymem.config import Trackers
from raymem.localcluster import init_local_ray
from raymem.store import Store
from raymem.sweep import run_sweep
from raymem.trial import Trial

folder = sys.argv[1]
init_local_ray(num_cpus=1, runtime_env={"worker_process_setup_hook": "trackedstage.setup"})
trials = [Trial("finetune", {"task": "reviews", "model": "m", "seed": seed, "variant": "clean"}, "tracked",
                folder + "/results", runtime={"device": "cpu", "cpus": 1}) for seed in (1, 2)]
trackers = Trackers.model_validate({
    "mlflow": {"tracking_uri": f"file:{folder}/mlruns", "experiment": "memorisation"},
    "wandb": {"project": "memorisation-wandb", "mode": "offline", "dir": f"{folder}/wandb"}})
failed = run_sweep("study", trials, Store(folder + "/results"), 0, print, trackers=trackers)
print(json.dumps({"failed": len(failed), "ids": {str(t.params["seed"]): t.trial_id for t in trials}}))
"""
