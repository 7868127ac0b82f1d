"""A full disk under the results store: no finished epoch is lost, nothing half-written is
read back, and the study stops with one message naming the store.

The store fails with ENOSPC at the n-th write, for every n a trial makes (its attempt
counter, a progress checkpoint per epoch, its table, its runs row, its marker); a rerun
with room again resumes from the last kept epoch. One test fills a real, small tmpfs
where this machine lets the test mount one.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import types
import uuid

import polars as pl
import pytest
import torch

import raymem.sweep as sweep
from raymem.runtime import PROGRESS, TrainingState
from raymem.store import Store
from raymem.sweep import run_trial
from raymem.trial import Trial

EPOCHS = 3
# the attempt counter, one progress checkpoint per epoch, the table, the runs row, the marker
WRITES = 1 + EPOCHS + 1 + 1 + 1


def no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


class Training:
    """A stage module `fake` that trains EPOCHS epochs of a tiny model, keeping progress."""

    def __init__(self, monkeypatch, rows: int = 4):
        self.epochs_run: list[int] = []
        self.rows = rows
        name = f"raymem_test_training_{uuid.uuid4().hex}"
        module = types.ModuleType(name)
        module.run = self.run
        monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(sweep, "STAGE_MODULES", {"fake": name})

    def run(self, trial, runtime):
        model = torch.nn.Linear(2, 1)
        state = TrainingState({"model": model}, runtime.seed(0))
        for epoch in range(runtime.resume(state), EPOCHS + 1):
            with torch.no_grad():
                model.bias += 1.0
            self.epochs_run.append(epoch)
            runtime.save_progress(state, epoch)
        runtime.finish_training()
        return {"things": pl.DataFrame({"bias": [float(model.bias.detach())] * self.rows,
                                        "noise": [os.urandom(8).hex() for _ in range(self.rows)]})}


def fail_at(monkeypatch, n: int) -> list[int]:
    """Make the store's n-th write (put_bytes or a shard) raise ENOSPC; count them."""
    count = [0]
    put_bytes, write_atomic = Store.put_bytes, Store._write_atomic

    def counted(original):
        def write(self, *args, **kwargs):
            count[0] += 1
            if count[0] == n:
                raise no_space()
            return original(self, *args, **kwargs)
        return write
    monkeypatch.setattr(Store, "put_bytes", counted(put_bytes))
    monkeypatch.setattr(Store, "_write_atomic", counted(write_atomic))
    return count


def make_trial(tmp_path) -> Trial:
    return Trial("fake", {"task": "t", "model": "m", "seed": 7}, "study", str(tmp_path / "results"),
                 runtime={"device": "cpu", "checkpoint_every": 1})


def kept_epoch(store: Store, trial: Trial) -> int | None:
    if not store.exists("checkpoints", trial.trial_id, PROGRESS):
        return None
    import io

    return torch.load(io.BytesIO(store.get_bytes("checkpoints", trial.trial_id, PROGRESS)),
                      weights_only=True)["epoch"]


@pytest.mark.parametrize("n", range(1, WRITES + 1))
def test_a_full_disk_at_any_write_loses_no_finished_epoch(monkeypatch, tmp_path, n):
    stage = Training(monkeypatch)
    trial = make_trial(tmp_path)
    count = fail_at(monkeypatch, n)
    result = run_trial(trial, sleep=lambda s: pytest.fail("a full disk is not retried"))
    assert count[0] >= n
    store = Store(trial.results)
    assert result["status"] == "failed" and result["error_kind"] == "disk_full", result
    assert "disk full" in result["error"] and store.uri in result["error"]
    assert not store.is_done(trial.trial_id)
    # every epoch whose checkpoint was written is still kept (epoch e's is write e + 1)
    saved = max((e for e in range(1, EPOCHS + 1) if e + 1 < n), default=None)
    assert kept_epoch(store, trial) == saved
    assert not [p for p in (tmp_path / "results").rglob("*.tmp-*")]  # no half-written file

    monkeypatch.setattr(Store, "put_bytes", Store.put_bytes)  # room again
    fail_at(monkeypatch, 0)
    stage.epochs_run.clear()
    again = run_trial(trial)
    assert again["status"] == "ok"
    assert stage.epochs_run == list(range((saved or 0) + 1, EPOCHS + 1))  # resumed, not redone
    assert store.is_done(trial.trial_id) and kept_epoch(store, trial) is None
    runs = store.read_shard("runs", "fake", trial.trial_id)
    assert runs["status"].to_list() == ["ok"]


def test_the_failure_row_is_written_where_it_fits(monkeypatch, tmp_path):
    Training(monkeypatch)
    trial = make_trial(tmp_path)
    fail_at(monkeypatch, 1 + EPOCHS + 1)  # the table
    result = run_trial(trial)
    runs = Store(trial.results).read_shard("runs", "fake", trial.trial_id)
    assert result["error_kind"] == "disk_full"
    assert runs["status"].to_list() == ["failed"] and runs["error_kind"].to_list() == ["disk_full"]


def test_a_full_store_stops_the_study_with_one_message(monkeypatch, tmp_path, capsys):
    import raymem.cli as cli
    import raymem.study as study_module

    plan = types.SimpleNamespace(store=Store(str(tmp_path / "results")), n_trials=lambda: 1,
                                 up_to_date=lambda: False, db_path=tmp_path / "results" / "raymem.duckdb")
    monkeypatch.setattr("raymem.config.load_study", lambda file, overrides: types.SimpleNamespace(study="s"))
    monkeypatch.setattr(study_module, "make_plan", lambda study: plan)

    def full(plan, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "runs"))
    monkeypatch.setattr(study_module, "run_plan", full)
    assert cli.main(["study", "any.yaml"]) == 3
    err = capsys.readouterr().err
    assert err.count("disk full") == 1 and plan.store.uri in err and "Traceback" not in err


def test_a_trial_reporting_a_full_store_stops_the_experiment():
    stopper = sweep.stop_when_full()
    assert not stopper("a", {"status": "failed", "error_kind": "permanent"}) and not stopper.stop_all()
    stopper("b", {"status": "failed", "error_kind": "disk_full"})
    assert stopper.stop_all()


def test_a_chart_cut_short_leaves_the_previous_one(monkeypatch, tmp_path):
    import altair as alt

    from raymem import charts

    chart = alt.Chart(pl.DataFrame({"x": [1, 2]})).mark_point().encode(x="x:Q")
    monkeypatch.setattr(charts, "build_chart", lambda name, db: chart)
    charts.save_chart("demo", "db", tmp_path)
    before = (tmp_path / "demo.png").read_bytes()
    assert before.startswith(b"\x89PNG")

    def cut_short(self, fp, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise no_space()
    monkeypatch.setattr(alt.Chart, "save", cut_short)
    with pytest.raises(OSError):
        charts.save_chart("demo", "db", tmp_path)
    assert (tmp_path / "demo.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.html", "demo.png"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root and a kernel that allow the mount), unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk(monkeypatch, tiny_disk):
    stage = Training(monkeypatch, rows=60_000)  # its table: about 1 MB of random digits
    trial = Trial("fake", {"task": "t", "model": "m", "seed": 7}, "study", str(tiny_disk / "results"),
                  runtime={"device": "cpu", "checkpoint_every": 1})
    filler = tiny_disk / "filler"
    with open(filler, "wb") as f:  # leave about 300 KB: epochs fit, the table does not
        try:
            f.write(b"\0" * (os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize - 300_000))
        except OSError:
            pass
    result = run_trial(trial)
    store = Store(trial.results)
    assert result["error_kind"] == "disk_full", result
    assert kept_epoch(store, trial) == EPOCHS and not store.is_done(trial.trial_id)
    assert not [p for p in (tiny_disk / "results").rglob("*.tmp-*")]
    filler.unlink()  # room again: the rerun resumes after the last epoch
    stage.epochs_run.clear()
    assert run_trial(trial)["status"] == "ok" and stage.epochs_run == []
    assert store.is_done(trial.trial_id)


class _Data:
    """Four examples of two features, in batches of the training loop's kind."""

    def __len__(self):
        return 4

    def batches(self, batch_size, generator, order="length_sorted"):
        order = torch.randperm(4, generator=generator)
        x = torch.arange(8.0).reshape(4, 2)
        yield {"x": x[order], "labels": (order % 2)}


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x):
        return types.SimpleNamespace(logits=self.linear(x))


def test_a_trial_stopped_early_resumes_without_training_past_its_stop(tmp_path):
    # A clean twin stops at the noisy trial's memorised epoch; its progress checkpoint now
    # outlives the training (until the results are written), so a restarted attempt must
    # not train the epoch after the stop.
    from raymem.runtime import Runtime
    from raymem.train import TrainSettings, fine_tune

    store = Store(str(tmp_path / "results"))
    settings = TrainSettings(epochs=4, lr=1e-2, batch_size=4, freeze_embeddings=False)
    trained = []

    def stop_at_2(epoch):
        trained.append(epoch)
        return epoch >= 2
    runtime = Runtime("cpu", "fp32", store=store, trial_id="t-1", checkpoint_every=1)
    fine_tune(_Model(), _Data(), settings, 0, stop_at_2, runtime)
    assert trained == [1, 2]
    first = [p.detach().clone() for p in _Model().parameters()]
    trained.clear()
    again = _Model()
    fine_tune(again, _Data(), settings, 0, stop_at_2,
              Runtime("cpu", "fp32", store=store, trial_id="t-1", checkpoint_every=1))
    assert trained == []  # resumed at the stop: nothing more trained
    assert not all(torch.equal(a, b) for a, b in zip(again.parameters(), first))  # the kept weights
