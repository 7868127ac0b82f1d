"""One driver per study and per database: the lock in the results store (raymem/lock.py).

Unit tests on a local folder and on S3 (moto), then real processes: a second `raymem
study` is refused while the first runs, and takes over once the first is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from raymem import lock
from raymem.lock import Holder, LocalFile, Lock, LockHeld, hold_study
from raymem.store import Store

from test_store_s3 import aws_env, bucket, s3_endpoint  # noqa: F401  (fixtures)


def refused(holder: Holder) -> str:
    return f"held by {holder.describe()}"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_holder(path: Path, **fields) -> None:
    holder = Holder.me("other")
    holder.__dict__.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(holder.encode())


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "_locks" / "s.json"
    first = Lock(LocalFile(path), "s", refused)
    first.acquire()
    with pytest.raises(LockHeld) as refusal:
        Lock(LocalFile(path), "s", refused).acquire()
    message = str(refusal.value)
    assert socket.gethostname() in message and f"pid {os.getpid()}" in message and "since" in message
    first.release()
    assert not path.exists()
    again = Lock(LocalFile(path), "s", refused)
    again.acquire()  # free again
    again.release()


@pytest.mark.parametrize("how", ["dead pid", "reused pid", "old heartbeat elsewhere", "unreadable"])
def test_a_stale_lock_is_taken_over(tmp_path, how):
    path = tmp_path / "s.json"
    if how == "dead pid":
        write_holder(path, pid=dead_pid())
    elif how == "reused pid":  # this process's pid, but not the process that took the lock
        write_holder(path, pid_start="1")
    elif how == "old heartbeat elsewhere":
        write_holder(path, host="elsewhere", heartbeat=time.time() - lock.STALE_AFTER_S - 1)
    else:
        path.write_bytes(b'{"cut sh')
    logged = []
    taker = Lock(LocalFile(path), "s", refused, log=logged.append)
    taker.acquire()
    assert json.loads(path.read_bytes())["token"] == taker.holder.token
    assert "taking over" in logged[0]
    taker.release()


def test_a_live_holder_elsewhere_is_not_taken_over(tmp_path):
    path = tmp_path / "s.json"
    write_holder(path, host="elsewhere", heartbeat=time.time() - 10)
    with pytest.raises(LockHeld, match="elsewhere"):
        Lock(LocalFile(path), "s", refused).acquire()


def test_the_heartbeat_is_refreshed_and_stops_once_taken_over(tmp_path):
    path = tmp_path / "s.json"
    logged = []
    held = Lock(LocalFile(path), "s", refused, log=logged.append, heartbeat_s=0.05)
    held.acquire()
    first = json.loads(path.read_bytes())["heartbeat"]
    time.sleep(0.3)
    assert json.loads(path.read_bytes())["heartbeat"] > first
    write_holder(path, host="elsewhere")  # another driver took it over
    time.sleep(0.3)
    assert "no longer holds the lock" in logged[-1]
    held.release()
    assert json.loads(path.read_bytes())["host"] == "elsewhere"  # not deleted: not ours


def test_two_studies_cannot_share_one_database(tmp_path):
    results = Store(str(tmp_path / "results"))
    db = tmp_path / "results" / "raymem.duckdb"
    with hold_study(results, "one", db, log=lambda *_: None):
        with pytest.raises(LockHeld, match="database: .*study one") as refusal:
            with hold_study(results, "two", db, log=lambda *_: None):
                pass
        assert "`database:`" in str(refusal.value)
        assert not (tmp_path / "results" / "_locks" / "two.json").exists()  # released again
    assert sorted(p.name for p in (tmp_path / "results" / "_locks").iterdir()) == []
    assert not db.with_name("raymem.duckdb.lock").exists()


def test_the_locks_are_released_on_ctrl_c(tmp_path):
    results = Store(str(tmp_path / "results"))
    with pytest.raises(KeyboardInterrupt):
        with hold_study(results, "one", tmp_path / "db.duckdb", log=lambda *_: None):
            raise KeyboardInterrupt
    assert not list((tmp_path / "results" / "_locks").iterdir())


def test_on_s3_with_conditional_writes(bucket):  # noqa: F811
    store = Store(f"s3://{bucket}/study")
    target = lock.study_lock_target(store, "s")
    first = Lock(target, "s", refused)
    first.acquire()
    with pytest.raises(LockHeld):
        Lock(lock.study_lock_target(store, "s"), "s", refused).acquire()
    first.release()
    # a stale lock of a crashed driver elsewhere: replaced only if it is still that object
    stale = Holder.me("s")
    stale.host, stale.heartbeat = "elsewhere", time.time() - lock.STALE_AFTER_S - 1
    assert target.create(stale.encode())
    current = target.read()
    assert not target.take_over(current[0], '"not-its-etag"', b"x")  # If-Match refused
    taker = Lock(lock.study_lock_target(store, "s"), "s", refused, log=lambda *_: None)
    taker.acquire()
    assert json.loads(target.read()[0])["token"] == taker.holder.token
    taker.release()
    assert target.read() is None


# -- real drivers ---------------------------------------------------------------------
@pytest.mark.ray
def test_a_second_driver_is_refused_then_takes_over_from_a_killed_one(tiny_mlm, tmp_path):
    from raymem.localcluster import stop_session
    from raymem.runtime import HOLD_DIR

    results = tmp_path / "results"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "locked", "results": str(results), "models": [str(tiny_mlm)],
        "tasks": ["tweet_sentiment"], "seeds": [1], "subsample": {"train": 32, "validation": 8, "test": 8},
        "precog": {"enabled": False},
        "finetune": {"variants": ["noisy"], "epochs": 2, "batch_size": 16, "max_length": 32},
        "ray": {"num_cpus": 1}}))
    hold = tmp_path / "hold"
    hold.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="rmlk-", dir="/tmp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    study = [sys.executable, "-m", "raymem.cli", "study", str(path)]
    log = tmp_path / "first.log"
    with open(log, "w") as out:  # its trial waits after epoch 1 until the test lets it go
        first = subprocess.Popen(study, stdout=out, stderr=subprocess.STDOUT,
                                 env={**env, HOLD_DIR: str(hold)}, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list(hold.glob("*.json")) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None and list(hold.glob("*.json")), log.read_text()[-3000:]
        second = subprocess.run(study, capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert "Traceback" not in second.stderr
        os.kill(first.pid, signal.SIGKILL)  # the driver only: a crash
        first.wait()
        for held in hold.glob("*.json"):
            held.unlink()
        third = subprocess.run(study, capture_output=True, text=True, env=env, timeout=400)
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
        assert "taking over the lock" in third.stdout
        assert not list((results / "_locks").iterdir())  # released at the end
    finally:
        stop_session(first.pid)
