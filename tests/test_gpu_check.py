"""benchmarks/gpu_check.py and benchmarks/gpu_first_run.py at their CPU size, so the GPU
checks cannot rot between GPU runs: every stage measured, the packing workers and the study
run, every trial on the CPU; and each first-run check passes (gpu_check's measurements,
which the first run also calls, are left to the first test: each test stays near 2 minutes)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"finetune", "precog", "retraining", "gradients", "hidden"}


def test_gpu_check_runs_on_cpu(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rmgpu-", dir="/tmp")  # short: Ray's socket paths have a limit
    out = tmp_path / "g.json"
    try:
        done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny",
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": ray_tmp})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert set(result["stages"]) == STAGES
    for name, stage in result["stages"].items():
        assert stage["items_per_s"] > 0 and stage["flop_s"] > 0, name
    assert result["packing"]["trials_per_hour_per_gpu"]["packed"] > 0
    study = result["study"]
    assert study["exit_code"] == 0
    assert {r["stage"] for r in study["runs"]} == {"precog", "finetune", "counterfactual", "localise"}
    assert all(r["device"] == "cpu" and r["status"] == "ok" for r in study["runs"]), study["runs"]
    assert "| finetune" in done.stdout  # the table was printed


FIRST_RUN_CHECKS = {"environment", "ray_packing", "cuda_error", "precog_pool", "numerics", "speed"}


def test_gpu_first_run_checks_run_on_cpu(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rmfr-", dir="/tmp")
    out = tmp_path / "f.json"
    try:
        done = subprocess.run([sys.executable, "benchmarks/gpu_first_run.py", "--device", "cpu", "--tiny",
                               "--skip", "measure", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": ray_tmp})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == [] and set(result["checks"]) == FIRST_RUN_CHECKS
    checks = result["checks"]
    assert all(c["ok"] for c in checks.values())
    assert checks["environment"]["pairing"]["wheel"] == "torch==2.13.0+cu128"
    packing = checks["ray_packing"]
    assert len(packing["trials"]) == 8 and packing["workers"] < 8  # reused workers
    assert {r["device"] for r in packing["trials"]} == {"cpu"} and all(r["gpu_ids"] for r in packing["trials"])
    assert checks["cuda_error"]["assert"]["sticky"] and checks["cuda_error"]["fresh_worker"]["device"] == "cpu"
    assert checks["precog_pool"]["rows"] == 8 and checks["precog_pool"]["device"] == "cpu"
    numerics = checks["numerics"]
    assert numerics["same_trial_twice_max_abs"] == 0 and numerics["resumed_vs_straight_max_abs"] == 0
    assert numerics["resumed_from_epoch"] == 2
    speed = checks["speed"]
    assert speed["syncs_per_step_equal_lengths"] < speed["syncs_per_step_padded"]  # no mask, no read of it
    assert speed["precog_real_lengths_copies_per_s"] > 0 and speed["precog_one_length_copies_per_s"] > 0
    assert "| numerics" in done.stdout  # the table was printed
