"""Autoscaling, on this machine: a study whose fine-tuning trials each need a GPU runs
against a local autoscaling Ray (raymem.localcluster: Ray's fake multi-node provider)
whose head has CPUs and no GPU.

- at the start there is no GPU node, so no trial can start;
- the autoscaler adds GPU worker nodes (fake GPUs: a resource, no device; raymem's
  fine-tuning runs on the CPU when torch sees no CUDA) up to the type's max_workers;
- every trial finishes: the study exits 0, every run is ok, every row is there;
- once the sweep is over the idle worker nodes go away (idle timeout of a few seconds).

The study runs as `raymem study` in a subprocess with RAY_ADDRESS set, as under
`ray job submit`; this test watches the nodes through Ray's state API meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from results_db import fetch
from raymem.localcluster import LocalCluster

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

REPO = Path(__file__).resolve().parent.parent
SUBSAMPLE = {"train": 48, "validation": 16, "test": 24}
SEEDS, VARIANTS = [1, 2], ["clean", "noisy"]
N_TRIALS = len(SEEDS) * len(VARIANTS)
MAX_GPU_NODES = 2  # fewer than the trials: the sweep has to queue on the nodes it gets
IDLE_TIMEOUT_S = 4
STUDY_TIMEOUT = 300  # a generous bound; about 60 s on a quiet 2-core machine
SCALE_UP_TIMEOUT = 120  # from the study's start to the first GPU node
SCALE_DOWN_TIMEOUT = 90  # from the study's end to no GPU node


@pytest.fixture
def cluster():
    c = LocalCluster(head_cpus=1, head_gpus=0, idle_timeout_s=IDLE_TIMEOUT_S, workers={
        "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0,
                       "max_workers": MAX_GPU_NODES}})
    c.start()
    try:
        yield c
    finally:
        c.stop()  # raises if any of its processes is left


def _gpu_nodes(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n["resources"].get("GPU", 0) > 0]


def test_gpu_sweep_scales_out_finishes_and_scales_in(cluster, tiny_mlm, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "study": "autoscale", "models": [str(tiny_mlm)], "tasks": ["tweet_sentiment"],
        "seeds": SEEDS, "subsample": SUBSAMPLE, "precog": {"enabled": False},
        "finetune": {"variants": VARIANTS, "epochs": 2, "lr": 1e-3, "batch_size": 16,
                     "max_length": 48,
                     # fake GPUs: Ray assigns them, CUDA has none, so the trials run on the CPU
                     "resources": {"cpus": 1, "gpus": 1, "device": "cpu"}}}))
    results, log = tmp_path / "results", tmp_path / "study.log"

    nodes = cluster.nodes()
    assert [n["type"] for n in nodes] == ["ray.head.default"], nodes
    assert not _gpu_nodes(nodes), f"a GPU node before the sweep: {nodes}"

    env = {**cluster.env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raymem.cli", "study", str(study),
                                 "--results", str(results)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.time()
    seen: dict[str, float] = {}  # GPU node id -> seconds after the start when first seen
    try:
        while proc.poll() is None and time.time() < started + STUDY_TIMEOUT:
            for n in _gpu_nodes(cluster.nodes()):
                seen.setdefault(n["node_id"], round(time.time() - started, 1))
            if not seen and time.time() > started + SCALE_UP_TIMEOUT:
                pytest.fail(f"no GPU node after {SCALE_UP_TIMEOUT}s: the autoscaler did not scale "
                            f"out\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
    finally:
        if proc.poll() is None:  # timed out (or the test failed): the driver and its session
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    ended = time.time()
    text = log.read_text(errors="replace")
    assert ended - started < STUDY_TIMEOUT, f"study did not finish in {STUDY_TIMEOUT}s:\n{text[-3000:]}"
    assert proc.returncode == 0, text[-4000:]
    assert f"{N_TRIALS} to run (1 CPU, 1 GPU each)" in text, text[-3000:]

    # scaled out: GPU nodes joined while the sweep ran, as many as the type allows
    assert seen, "no GPU node was ever seen although every trial needs a GPU"
    assert len(seen) == MAX_GPU_NODES, f"GPU nodes seen (id: first seen, s): {seen}"

    # every trial finished, every row exactly once
    db = results / "raymem.duckdb"
    runs = fetch(db, "SELECT trial_id, status, error FROM runs WHERE stage = 'finetune'")
    assert len(runs) == N_TRIALS and {r[1] for r in runs} == {"ok"}, runs
    per_trial = fetch(db, """SELECT p.trial_id, COUNT(*), ANY_VALUE(r.memorised_epoch) IS NOT NULL
                            FROM predictions p JOIN runs r USING (trial_id) GROUP BY 1""")
    assert {r[0] for r in per_trial} == {r[0] for r in runs}
    for trial_id, n, memorised in per_trial:  # train + test at "final", again at "memorised"
        assert n == (SUBSAMPLE["train"] + SUBSAMPLE["test"]) * (1 + memorised), trial_id
    assert fetch(db, """SELECT COUNT(*) FROM (SELECT trial_id, checkpoint, split, example_id
                       FROM predictions GROUP BY ALL HAVING COUNT(*) > 1)""") == [(0,)]
    assert len({p.stem for p in (results / "_done").glob("finetune-*.json")}) == N_TRIALS

    # scaled in: the idle GPU nodes go, the head stays
    try:
        nodes = cluster.wait_for(lambda ns: not _gpu_nodes(ns), SCALE_DOWN_TIMEOUT,
                                 f"idle GPU nodes removed (idle timeout {IDLE_TIMEOUT_S}s)")
    except TimeoutError as exc:
        pytest.fail(str(exc))
    assert [n["type"] for n in nodes] == ["ray.head.default"], nodes
    print(f"\nGPU nodes first seen at (s after the study started): {sorted(seen.values())}; "
          f"study {ended - started:.0f}s; scaled in {time.time() - ended:.0f}s after it ended")
