"""benchmarks/gpu_check.py at its CPU size, so the GPU check cannot rot between GPU runs:
every stage measured, the packing workers and the study run, every trial on the CPU."""

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
