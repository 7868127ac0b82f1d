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
