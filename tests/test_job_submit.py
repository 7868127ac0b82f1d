"""The README's `ray job submit` line against a real local Ray head started by the test."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from raymem.localcluster import stop_session

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args, env, timeout=120):
    return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def ray_head():
    # Token authentication on, for the head and for the `ray job submit` client alike; a
    # RAY_TMPDIR of its own, so the head neither finds nor is found by another Ray here.
    # (short: Ray's socket paths under it must stay below 107 bytes)
    ray_tmp = tempfile.mkdtemp(prefix="rjs-", dir="/tmp")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    # its own session: stopping it kills that session's processes, never another Ray's
    started = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--disable-usage-stats"], env=env, cwd=REPO, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = started.communicate(timeout=120)
        assert started.returncode == 0, output
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        stop_session(started.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_job_submit_runs_a_study(ray_head, tiny_mlm, tmp_path):
    env, address = ray_head
    results = tmp_path / "results"
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "study": "job", "results": "ignored-relative", "models": [str(tiny_mlm)],
        "tasks": ["tweet_polarity"], "seeds": [1],
        "subsample": {"train": 32, "validation": 8, "test": 24},
        "precog": {"k": [1, 50], "max_length": 48, "actors": {"min_size": 1, "max_size": 1}},
        "finetune": {"variants": ["noisy"], "epochs": 2, "lr": 1e-3, "batch_size": 16, "max_length": 48},
    }))
    # The README's line, with the results sent to an absolute path outside the job's
    # temporary copy of the working directory.
    for _ in range(20):
        submitted = _run(BIN / "ray", "job", "submit", "--address", address, "--working-dir", ".",
                         "--", "python", "jobs/study.py", study, "--results", results,
                         env=env, timeout=900)
        # a head under load may register its job agent after `ray start` returns: Ray's own
        # answer is "please try again later", and no job was created
        if "No available agent to submit job" not in submitted.stderr + submitted.stdout:
            break
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in (submitted.stdout + submitted.stderr).lower()  # the job status line
    con = duckdb.connect(str(results / "raymem.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT COUNT(*) FROM precog").fetchone()[0] == 24 * 2
        assert con.execute("SELECT COUNT(DISTINCT seed) FROM predictions").fetchone()[0] == 1
        assert con.execute("SELECT status FROM runs WHERE stage = 'finetune'").fetchall() == [("ok",)]
    finally:
        con.close()
