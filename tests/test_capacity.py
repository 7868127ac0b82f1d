"""What a cluster can ever hold (raymem/capacity.py), against what a study asks for at once.

A placement group is all or nothing: a PreCog pool of more bundles than the cluster's
autoscaler can ever launch nodes for waits forever. The study is refused before it starts
(exit 2, nothing written), from the autoscaler's own config: unit tests with the
repository's cluster configs and studies, and one end to end against a local autoscaling
Ray (raymem.localcluster), where a study asked for more GPUs than the GPU node type's
max_workers used to wait for ever.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config
from ray.core.generated import autoscaler_pb2

from raymem import capacity
from raymem.config import load_study
from raymem.errors import ConfigError
from raymem.localcluster import LocalCluster
from raymem.study import _await_reservation, _largest_asks

REPO = Path(__file__).resolve().parent.parent


def cluster_capacity(name: str, gpu_nodes: int | None = None) -> capacity.Capacity:
    """A repository cluster config as the autoscaler on the head reads it (defaults merged)."""
    cfg = prepare_config(yaml.safe_load((REPO / name).read_text()))
    if gpu_nodes is not None:
        cfg = copy.deepcopy(cfg)
        cfg["available_node_types"]["gpu_worker"]["max_workers"] = gpu_nodes
        cfg["max_workers"] = max(cfg["max_workers"], gpu_nodes)
    return capacity.from_autoscaler_config(cfg, name)


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-gcp.yaml"])
def test_precog2023_pool_can_never_be_placed_on_the_shipped_clusters(name):
    study = load_study(REPO / "studies/precog2023.yaml")
    asks = _largest_asks(study)
    assert asks["precog.actors"] == ({"CPU": 4, "GPU": 1}, 8)
    cap = cluster_capacity(name)
    assert cap.most({"CPU": 4, "GPU": 1}) == 4  # 4 GPU nodes, a CPU-0 head
    with pytest.raises(ConfigError) as err:
        capacity.check(asks, cap)
    message = str(err.value)
    assert message.startswith("precog.actors.max_size: the actor pool's placement group asks for 8 x "
                              "(4 CPU, 1 GPU) at once"), message
    assert "at most 4 of them" in message and "gpu_worker: up to 4 x (4 CPU, 1 GPU)" in message
    # with the GPU type raised to 8 nodes it fits, and so does every trial
    capacity.check(asks, cluster_capacity(name, gpu_nodes=8))


def test_a_trial_no_node_type_can_hold_is_refused():
    cap = cluster_capacity("cluster.yaml")
    with pytest.raises(ConfigError, match=r"^finetune.resources: a trial asks for 8 CPU, 1 GPU, more than any node"):
        capacity.check({"finetune.resources": ({"CPU": 8, "GPU": 1}, 1)}, cap)
    with pytest.raises(ConfigError, match=r"^localise.resources: a trial asks for 1 CPU, 2 GPU"):
        capacity.check({"localise.resources": ({"CPU": 1, "GPU": 2}, 1)}, cap)
    capacity.check({"finetune.resources": ({"CPU": 4, "GPU": 1}, 1)}, cap)


def test_fractions_caps_and_the_head():
    types = [capacity.NodeType("head", {"CPU": 4.0}, 1, is_head=True),
             capacity.NodeType("gpu", {"CPU": 4.0, "GPU": 1.0}, 3),
             capacity.NodeType("big", {"CPU": 16.0, "GPU": 4.0}, 2)]
    cap = capacity.Capacity(types, max_workers=3, source="test")
    assert cap.most({"CPU": 1.0, "GPU": 0.25}) == 16 + 16 + 4  # 2 big, then 1 gpu node: the cap of 3
    assert cap.most({"CPU": 1.0, "GPU": 0.0}) == 4 + 16 * 2 + 4  # the head's CPUs count too
    assert cap.most({"CPU": 2.0, "GPU": 0.5}) == 8 * 2 + 2  # the GPU-less head holds none
    unbounded = capacity.Capacity([capacity.NodeType("gpu", {"CPU": 4.0, "GPU": 1.0}, None)], None, "t")
    assert unbounded.most({"CPU": 4.0, "GPU": 1.0}) == math.inf
    unbounded.limits = {"GPU": 6.0}  # a cluster-wide cap on GPUs
    assert unbounded.most({"CPU": 1.0, "GPU": 0.5}) == 12


def test_from_the_cluster_config_the_autoscaler_reports():
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.name, group.max_count = "gpu", 2
    group.resources["CPU"], group.resources["GPU"] = 8, 1
    head = config.node_group_configs.add()
    head.name, head.max_count = "head", 1
    head.resources["CPU"] = 2
    cap = capacity.from_cluster_config(config)
    assert cap.most({"CPU": 4.0, "GPU": 1.0}) == 2
    assert cap.most({"CPU": 2.0}) == 8 + 1
    with pytest.raises(ConfigError, match="precog.actors.max_size: .* at most 2 of them"):
        capacity.check({"precog.actors": ({"CPU": 4.0, "GPU": 1.0}, 3)}, cap)


def test_a_fixed_cluster_and_unknown_node_resources():
    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 8.0, "GPU": 2.0}}]
    assert capacity.from_nodes(nodes).most({"CPU": 1.0, "GPU": 1.0}) == 2
    # a node type whose resources Ray detects at launch: unknown, so nothing is refused
    cfg = {"head_node_type": "h", "max_workers": 1,
           "available_node_types": {"h": {"resources": {"CPU": 0}}, "w": {"max_workers": 1}}}
    cap = capacity.from_autoscaler_config(cfg, "test")
    capacity.check({"precog.actors": ({"CPU": 4.0, "GPU": 1.0}, 100)}, cap)


def test_the_wait_for_the_pool_has_a_timeout(monkeypatch):
    import ray

    class Group:
        def ready(self):
            return "ready-ref"

    monkeypatch.setattr(ray, "wait", lambda refs, timeout: (time.sleep(min(timeout, 0.05)), ([], refs))[1])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 2.0, "memory": 1.0})
    pool = load_study(REPO / "studies/precog2023.yaml").precog.actors
    said = []
    with pytest.raises(TimeoutError) as err:
        _await_reservation(Group(), pool, said.append, timeout_s=0.2, every_seconds=0.05)
    assert "(ray.placement_timeout_s) for the actor pool's placement group of 8 x (4 CPU, 1 GPU) " \
           "(precog.actors); the cluster has 4 CPU, 2 GPU now" in str(err.value)
    assert said and said[0].startswith("[precog] waiting")
    assert load_study(REPO / "studies/precog2023.yaml").ray.placement_timeout_s == 1800


@pytest.mark.ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_study_the_autoscaler_can_never_place_is_refused_end_to_end(tmp_path):
    """2 GPU nodes at most, a pool of 3 x 1 GPU: before, the study waited for ever."""
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "study": "never", "models": ["raymem-mini"], "tasks": ["tweet_sentiment"], "seeds": [1],
        "subsample": {"train": 16, "validation": 8, "test": 8},
        "finetune": {"enabled": False},
        "precog": {"k": [1], "max_length": 32, "actors": {"cpus": 1, "gpus": 1, "min_size": 1, "max_size": 3,
                                                          "device": "cpu"}}}))
    results = tmp_path / "results"
    with LocalCluster(head_cpus=1, idle_timeout_s=5, workers={
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2}}) as cluster:
        env = {**cluster.env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.Popen([sys.executable, "-m", "raymem.cli", "study", str(study), "--results",
                                 str(results)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"the study waited instead of being refused:\n{out[-3000:]}")
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("raymem: error:")]
    assert len(errors) == 1, out[-3000:]
    assert errors[0].startswith("raymem: error: precog.actors.max_size: the actor pool's placement group "
                                "asks for 3 x (1 CPU, 1 GPU) at once"), errors
    assert "at most 2 of them" in errors[0] and "gpu_worker: up to 2 x (1 CPU, 1 GPU)" in errors[0]
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


def test_the_study_checks_its_cluster_before_anything_is_written(monkeypatch):
    import raymem.study as study_module

    study = load_study(REPO / "studies/precog2023.yaml").model_copy(
        update={"ray": load_study(REPO / "studies/precog2023.yaml").ray.model_copy(update={"address": "auto"})})
    connected = []
    monkeypatch.setattr(study_module, "_init_ray", lambda s: connected.append(s.ray.address))
    monkeypatch.setattr(capacity, "of_running_cluster", lambda: cluster_capacity("cluster.yaml"))
    with pytest.raises(ConfigError, match=r"^precog.actors.max_size: .* asks for 8 x \(4 CPU, 1 GPU\)"):
        study_module._check_capacity(study, print)
    assert connected == ["auto"]  # a cluster: connected first, to read what it can hold
    unknown = capacity.from_autoscaler_config(
        {"head_node_type": "h", "available_node_types": {"h": {"resources": {"CPU": 0}}, "w": {}}}, "test")
    monkeypatch.setattr(capacity, "of_running_cluster", lambda: unknown)
    said = []
    study_module._check_capacity(study, said.append)  # nothing known: nothing refused, and said so
    assert said == ["[plan] what the cluster can hold is not checked: node type w states no resources"]
