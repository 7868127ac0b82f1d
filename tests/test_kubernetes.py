"""k8s/rayjob.yaml against KubeRay's RayJob schema (tests/data/kuberay_rayjob_v1_schema.json,
KubeRay v1.7.0), checked strictly as `kubectl apply` does (an unknown field is an error), and
against the project: the study it runs, the pins its image installs."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from raymem.config import load_study

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "k8s" / "rayjob.yaml"
DOCKERFILE = REPO / "k8s" / "Dockerfile"
SCHEMA = Path(__file__).parent / "data" / "kuberay_rayjob_v1_schema.json"


def strict(schema):
    """The schema with unknown fields refused: a CRD's structural schema leaves them to the API
    server, which refuses them under strict field validation (kubectl's default)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    return [strict(v) for v in schema] if isinstance(schema, list) else schema


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))


@pytest.fixture
def manifest():
    return yaml.safe_load(MANIFEST.read_text())


def errors(validator, manifest) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def test_the_rayjob_is_valid_against_kuberays_schema(validator, manifest):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    assert errors(validator, manifest) == []


@pytest.mark.parametrize("path, value, word", [
    (("spec", "rayClusterSpec", "enableInTreeAutoscalling"), True, "enableInTreeAutoscalling"),  # misspelt
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "minReplicas"), "0", "'0' is not of type 'integer'"),
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "groupName"), None, "'groupName' is a required property"),
    (("spec", "rayClusterSpec", "headGroupSpec", "template"), None, "'template' is a required property"),
    (("spec", "rayClusterSpec", "autoscalerOptions", "upscalingMode"), "Eager", "'Eager' is not one of"),
])
def test_the_schema_check_catches_a_broken_manifest(validator, manifest, path, value, word):
    broken = copy.deepcopy(manifest)
    where = broken
    for key in path[:-1]:
        where = where[key]
    if value is None:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    assert any(word in e for e in errors(validator, broken)), errors(validator, broken)


def test_gpu_workers_scale_from_zero_under_the_autoscaler(manifest):
    cluster = manifest["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]  # a CPU head
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no trial lands on it
    assert head["image"] == worker["image"]  # one image, one set of pins


def test_the_job_runs_a_shipped_study_whose_trials_fit_a_gpu_worker(manifest):
    command = manifest["spec"]["entrypoint"]
    *_, run = command.split("&&")
    python, script, study_file = shlex.split(run)
    assert (python, script) == ("python", "jobs/study.py") and (REPO / script).is_file()
    study = load_study(REPO / study_file)  # it exists and is valid
    # object storage or shared storage: a pod's own disk goes with the cluster
    assert study.results.startswith(("s3://", "gs://", "/")) and study.database
    (gpu,) = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    for resources in (study.finetune.resources, study.precog.actors):
        assert resources.cpus <= float(limits["cpu"]) and resources.gpus <= limits["nvidia.com/gpu"]


def test_the_image_installs_the_projects_pins(manifest):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray["))
    assert manifest["spec"]["rayClusterSpec"]["rayVersion"] == ray_pin.split("==")[1]
    dockerfile = DOCKERFILE.read_text()
    python = re.search(r"^FROM python:(\d+\.\d+)", dockerfile, re.M).group(1)
    assert f">={python}" in project["requires-python"]
    assert "-c requirements.lock" in dockerfile  # exactly the lock's versions
    copied = {part for line in dockerfile.splitlines() if line.startswith("COPY ")
              for part in line.split()[1:-1]}
    assert {"pyproject.toml", "requirements.lock", "raymem", "jobs", "studies"} <= copied
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M) and manifest["spec"]["entrypoint"].startswith("cd /app ")
