"""Failure kinds of a trial, with faults injected into a fake stage, through `run_trial`.

No Ray: `run_trial` runs the trial in this process on a real Store in tmp_path. The fake
stage's `run(trial, runtime)` raises the planned exceptions one call after another, then
returns a table; `sleep` is a recorder, so the back-off costs no time.
"""

from __future__ import annotations

import sys
import types
import uuid

import polars as pl
import pytest
import torch

import raymem.sweep as sweep
from raymem.errors import ConfigError
from raymem.store import Store
from raymem.sweep import TRANSIENT_RETRIES, error_kind, run_trial
from raymem.trial import Trial

SLOW_DOWN = "SlowDown: please reduce your request rate (503)"


class FakeStage:
    """Installs a stage module named `fake` whose run() raises `faults` in turn, then succeeds."""

    def __init__(self, monkeypatch, faults):
        self.faults, self.calls, self.runtimes = list(faults), 0, []
        name = f"raymem_test_fake_stage_{uuid.uuid4().hex}"
        module = types.ModuleType(name)
        module.STAGE, module.WHERE = "fake", "tune"
        module.run = self.run
        monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(sweep, "STAGE_MODULES", {"fake": name})

    def run(self, trial, runtime):
        self.calls += 1
        self.runtimes.append(runtime)
        if self.faults:
            raise self.faults.pop(0)
        return {"things": pl.DataFrame({"thing": [1, 2, 3], "seed": trial.params["seed"]})}


def make_trial(tmp_path, **runtime) -> Trial:
    return Trial("fake", {"task": "t", "model": "m", "seed": 7}, "study", str(tmp_path / "results"),
                 runtime={"device": "cpu", **runtime})


def run(trial):
    delays = []
    result = run_trial(trial, sleep=delays.append)
    store = Store(trial.results)
    return result, delays, store, store.read_shard("runs", "fake", trial.trial_id)


def has_things(store, trial) -> bool:
    return store.exists("things", "fake", f"{trial.trial_id}.parquet")


# -- error_kind ---------------------------------------------------------------------------
@pytest.mark.parametrize("exc, kind", [
    (ConnectionError("reset by peer"), "transient"),
    (ConnectionResetError(104, "Connection reset by peer"), "transient"),
    (TimeoutError("read"), "transient"),
    (OSError(SLOW_DOWN), "transient"),
    (OSError("AWS Error NETWORK_CONNECTION during CreateMultipartUpload operation: connection reset"),
     "transient"),
    (OSError("When reading information for key 'x': AWS Error SERVICE_UNAVAILABLE (503)"), "transient"),
    (OSError("Request timed out"), "transient"),
    (type("ReadTimeoutError", (Exception,), {})("read timeout on endpoint"), "transient"),
    (type("RayActorError", (Exception,), {})("the actor died"), "transient"),
    (OSError("No such file or directory"), "permanent"),
    (FileNotFoundError(2, "No such file or directory", "results/x.parquet"), "permanent"),
    (PermissionError(13, "Permission denied", "results"), "permanent"),
    # a path that happens to read like a transient error is still a missing file
    (FileNotFoundError(2, "No such file or directory", "ckpt/timeout.yaml"), "permanent"),
    (PermissionError(13, "Permission denied", "/data/run-429"), "permanent"),
    (ValueError("bad data"), "permanent"),
    (KeyError("label"), "permanent"),
    (ConfigError("device: cuda was set, but ..."), "permanent"),
    (RuntimeError("shape mismatch"), "permanent"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                  "you tried to allocate 1 bytes. Out of memory"), "oom"),
    (MemoryError(), "oom"),
])
def test_error_kind(exc, kind):
    assert error_kind(exc) == kind


# -- through run_trial -----------------------------------------------------------------------
def test_transient_errors_are_retried_with_growing_back_off(monkeypatch, tmp_path):
    stage = FakeStage(monkeypatch, [ConnectionError("connection reset"), ConnectionError("connection reset")])
    trial = make_trial(tmp_path)
    result, delays, store, runs = run(trial)
    assert result["status"] == "ok" and result["device"] == "cpu"
    assert stage.calls == 3
    assert delays == [2.0, 4.0]
    assert store.is_done(trial.trial_id)
    things = store.read_shard("things", "fake", trial.trial_id)
    assert things["thing"].to_list() == [1, 2, 3] and set(things["trial_id"]) == {trial.trial_id}
    assert runs.height == 1
    row = runs.row(0, named=True)
    assert row["status"] == "ok" and row["attempts"] == 3
    assert row["error"] is None and row["error_kind"] is None
    assert row["device"] == "cpu" and row["seed"] == 7 and row["trial_id"] == trial.trial_id


def test_a_transient_error_that_never_ends_fails_after_the_retries(monkeypatch, tmp_path):
    stage = FakeStage(monkeypatch, [TimeoutError("storage timed out")] * 100)
    trial = make_trial(tmp_path)
    result, delays, store, runs = run(trial)
    assert result["status"] == "failed" and result["error_kind"] == "transient"
    assert stage.calls == TRANSIENT_RETRIES + 1
    assert delays == [min(30.0, 2.0 * 2 ** i) for i in range(TRANSIENT_RETRIES)]  # [2, 4, 8]
    assert runs.height == 1
    row = runs.row(0, named=True)
    assert row["status"] == "failed" and row["error_kind"] == "transient"
    assert row["attempts"] == TRANSIENT_RETRIES + 1
    assert "TimeoutError: storage timed out" in row["error"]
    assert not store.is_done(trial.trial_id) and not has_things(store, trial)


def test_storage_throttling_is_retried(monkeypatch, tmp_path):
    stage = FakeStage(monkeypatch, [OSError(SLOW_DOWN)])
    trial = make_trial(tmp_path)
    result, delays, store, runs = run(trial)
    assert result["status"] == "ok" and stage.calls == 2 and delays == [2.0]
    assert runs["attempts"].to_list() == [2] and store.is_done(trial.trial_id)


def test_a_missing_file_is_permanent(monkeypatch, tmp_path):
    stage = FakeStage(monkeypatch, [OSError("No such file or directory: results/examples/x.parquet")])
    trial = make_trial(tmp_path)
    result, delays, store, runs = run(trial)
    assert result["status"] == "failed" and result["error_kind"] == "permanent"
    assert stage.calls == 1 and delays == []
    assert runs["error_kind"].to_list() == ["permanent"]


def test_a_permanent_error_is_not_retried(monkeypatch, tmp_path):
    stage = FakeStage(monkeypatch, [ValueError("bad data")])
    trial = make_trial(tmp_path)
    result, delays, store, runs = run(trial)
    assert stage.calls == 1 and delays == []
    assert result == {"status": "failed", "error_kind": "permanent", "error": "ValueError: bad data"}
    assert runs.height == 1
    row = runs.row(0, named=True)
    assert row["status"] == "failed" and row["error_kind"] == "permanent" and row["attempts"] == 1
    assert "bad data" in row["error"] and "Traceback" in row["error"]
    assert not store.is_done(trial.trial_id)
    assert not has_things(store, trial)


def test_a_rerun_of_a_failed_trial_counts_its_attempt_and_replaces_its_runs_row(monkeypatch, tmp_path):
    FakeStage(monkeypatch, [ValueError("bad data")])
    trial = make_trial(tmp_path)
    run(trial)
    stage = FakeStage(monkeypatch, [])  # fixed
    result, _, store, runs = run(trial)
    assert result["status"] == "ok" and stage.calls == 1
    assert runs.height == 1 and runs.row(0, named=True)["status"] == "ok"
    assert runs["attempts"].to_list() == [2]
    assert store.is_done(trial.trial_id) and has_things(store, trial)


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 22.19 GiB total)"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
], ids=["OutOfMemoryError", "RuntimeError"])
def test_out_of_memory_is_not_retried_and_says_what_to_lower(monkeypatch, tmp_path, exc):
    stage = FakeStage(monkeypatch, [exc])
    trial = make_trial(tmp_path)
    result, delays, store, runs = run(trial)
    assert stage.calls == 1 and delays == []
    assert result["status"] == "failed" and result["error_kind"] == "oom"
    row = runs.row(0, named=True)
    assert row["error_kind"] == "oom" and row["status"] == "failed"
    for hint in ("batch_size", "max_length", "gpus"):
        assert hint in row["error"], hint
    assert "CUDA out of memory" in row["error"]
    assert not store.is_done(trial.trial_id) and not has_things(store, trial)


def test_a_runtime_config_error_is_permanent_and_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this node has no CUDA
    stage = FakeStage(monkeypatch, [])
    trial = make_trial(tmp_path, device="cuda")
    result, delays, store, runs = run(trial)
    assert stage.calls == 0 and delays == []  # failed building the runtime, before the stage
    assert result["status"] == "failed" and result["error_kind"] == "permanent"
    assert "`device: cpu`" in result["error"]
    row = runs.row(0, named=True)
    assert row["status"] == "failed" and row["error_kind"] == "permanent"
    assert "ConfigError" in row["error"] and "`device: cpu`" in row["error"]
    assert not store.is_done(trial.trial_id)


def test_a_failure_while_writing_leaves_no_shard_of_the_trial(monkeypatch, tmp_path):
    # the second table cannot be written: the first one's shard goes too, so a failed trial
    # leaves only its runs row for ingest to find
    module = sys.modules[FakeStage(monkeypatch, []) and sweep.STAGE_MODULES["fake"]]
    monkeypatch.setattr(module, "run", lambda trial, runtime: {"things": pl.DataFrame({"thing": [1]}),
                                                               "broken": pl.DataFrame({"thing": [2]})})
    write_rows = Store.write_rows

    def failing(self, table, *args, **kwargs):
        if table == "broken":
            raise ValueError("disk says no")
        return write_rows(self, table, *args, **kwargs)
    monkeypatch.setattr(Store, "write_rows", failing)
    trial = make_trial(tmp_path)
    result, _, store, runs = run(trial)
    assert result["status"] == "failed" and runs.row(0, named=True)["status"] == "failed"
    assert not has_things(store, trial) and not store.is_done(trial.trial_id)
    assert store.read_table("things") is None  # nothing of it for ingest to find


# -- PreCog: its failures are trials' failures ---------------------------------------------
def test_a_failing_precog_is_recorded_and_the_study_ingested(monkeypatch, tiny_mlm, tmp_path, capsys):
    import yaml

    import raymem.study as study_module
    from raymem.cli import main
    from raymem.stages import precog

    def broken(*args, **kwargs):
        raise ValueError("PreCog cannot score this split")
    # no Ray: the pool is never reserved, and scoring fails as it would inside Ray Data
    monkeypatch.setattr(study_module, "_init_ray", lambda study: None)
    monkeypatch.setattr(study_module, "reserve_pool", lambda actors: None)
    monkeypatch.setattr(precog, "run", broken)
    results = tmp_path / "results"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "precogfails", "results": str(results), "models": [str(tiny_mlm)],
        "tasks": ["tweet_sentiment"], "seeds": [1], "subsample": {"train": 16, "validation": 8, "test": 8},
        "precog": {"k": [1], "max_length": 32, "actors": {"min_size": 1, "max_size": 1}},
        "finetune": {"enabled": False}, "ray": {"num_cpus": 2}}))
    assert main(["study", str(path)]) == 1
    err = capsys.readouterr().err
    assert "1 trial(s) failed" in err and "precog-" in err
    # its error, in full, once: at the end, under the failed trial
    assert err.count("Traceback") == 1 and err.count("ValueError: PreCog cannot score this split") == 1
    assert err.index("Traceback") > err.index("1 trial(s) failed")
    db = results / "raymem.duckdb"
    assert db.is_file()
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT stage, status, error_kind, error FROM runs").fetchall()
        examples = con.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
    finally:
        con.close()
    assert [(r[0], r[1], r[2]) for r in runs] == [("precog", "failed", "permanent")]
    assert "PreCog cannot score this split" in runs[0][3]
    assert examples == 32
    assert not any((results / "_done").glob("precog-*.json"))  # a rerun tries it again


# -- a CUDA error ends its worker -----------------------------------------------------------
@pytest.mark.parametrize("exc", [
    RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
                 "reported"),
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
], ids=["RuntimeError", "AcceleratorError"])
def test_a_cuda_error_is_permanent_and_asks_to_end_the_worker(monkeypatch, tmp_path, exc):
    FakeStage(monkeypatch, [exc])
    trial = make_trial(tmp_path)
    result, delays, store, runs = run(trial)
    assert result["status"] == "failed" and result["error_kind"] == "permanent"
    assert result["end_worker"] is True and delays == []
    row = runs.row(0, named=True)
    assert row["error_kind"] == "permanent" and "worker was ended" in row["error"]
    assert "CUDA error" in row["error"]


def test_out_of_memory_keeps_the_worker(monkeypatch, tmp_path):
    FakeStage(monkeypatch, [RuntimeError("CUDA error: out of memory")])
    result, *_ = run(make_trial(tmp_path))
    assert result["error_kind"] == "oom" and "end_worker" not in result


def test_each_trial_frees_the_memory_it_held(monkeypatch, tmp_path):
    # on CPU only the collection can be seen; on a GPU the same call empties torch's cache
    # and resets the peak (benchmarks/gpu_check.py measures memory before and after)
    calls = []
    monkeypatch.setattr(sweep, "free_device_memory", lambda: calls.append("freed"))
    FakeStage(monkeypatch, [ValueError("bad data")])
    run(make_trial(tmp_path))
    FakeStage(monkeypatch, [])
    run(make_trial(tmp_path))
    assert calls == ["freed", "freed"]
    monkeypatch.undo()
    collected = []
    import gc

    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    sweep.free_device_memory()
    assert collected


@pytest.mark.ray
def test_a_cuda_error_in_a_sweep_ends_its_worker_and_the_next_trial_runs_in_a_new_one(tmp_path):
    """A real Tune sweep of one worker slot: the first trial raises a CUDA error, the second
    must run in another process (the first worker's CUDA context would be dead) and succeed."""
    import json
    import os
    import subprocess
    import tempfile

    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    (tmp_path / "cudafake.py").write_text(FAKE_STAGE)
    ray_tmp = tempfile.mkdtemp(prefix="rmcu-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "results")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    store = Store(str(tmp_path / "results"))
    runs = pl.from_arrow(store.read_table("runs")).sort("seed")
    assert runs["status"].to_list() == ["failed", "ok"]
    assert runs["error_kind"].to_list() == ["permanent", None]
    assert runs["attempts"].to_list() == [1, 1]  # the failed trial was not run again
    pids = report["pids"]
    assert len(pids) == 2 and pids["1"] != pids["2"], pids
    assert report["failed"] == [1]


# A stage module the Tune workers import (Ray's worker setup hook points `finetune` at it).
FAKE_STAGE = """
import os
import polars as pl


def setup():
    import raymem.sweep
    raymem.sweep.STAGE_MODULES["finetune"] = "cudafake"


def run(trial, runtime):
    folder = os.path.join(os.path.dirname(trial.results), "pids")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, str(trial.params["seed"])), "w") as f:
        f.write(str(os.getpid()))
    if trial.params["seed"] == 1:
        raise RuntimeError("CUDA error: device-side assert triggered")
    return {"things": pl.DataFrame({"thing": [trial.params["seed"]]})}
"""
SWEEP_SCRIPT = """
import json, os, sys
from raymem.localcluster import init_local_ray
from raymem.store import Store
from raymem.sweep import run_sweep
from raymem.trial import Trial

results = sys.argv[1]
init_local_ray(num_cpus=1, runtime_env={"worker_process_setup_hook": "cudafake.setup"})
# seed 1 (the longer, by its epochs) first, then seed 2, in one worker slot
trials = [Trial("finetune", {"task": "t", "model": "m", "seed": seed, "settings": {"epochs": epochs}},
                "cuda", results, runtime={"device": "cpu", "cpus": 1}) for seed, epochs in ((1, 20), (2, 1))]
failed = run_sweep("study", trials, Store(results), 1, print)
folder = os.path.join(os.path.dirname(results), "pids")
pids = {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)}
print(json.dumps({"pids": pids, "failed": [t.params["seed"] for t in failed]}))
"""
