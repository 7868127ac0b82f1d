"""The cluster's CUDA stack, in one place: the torch build each kind of node installs, the
NVIDIA driver that build needs, and the cloud images whose driver meets it.

cluster.yaml, cluster-gcp.yaml, requirements-gpu.lock and requirements-cpu.lock repeat
these values (YAML and lock files cannot import Python); tests/test_cluster_config.py
checks that they agree with this module, and `python -m raymem.nodecheck` checks a GPU
node against it when the node starts (docs/gpus.md).

Why the GPU nodes install torch's CUDA 12.8 build rather than PyPI's wheel: PyPI's torch
2.13.0 for Linux x86_64 is built against CUDA 13, which needs driver >= 580, while Google's
Deep Learning VM family of cluster-gcp.yaml carries an R570 driver and AWS's Deep Learning
Base AMI has carried R570 or newer. A CUDA 12.8 build runs on R570 and on every newer
driver (a driver runs the CUDA versions older than itself), so one wheel fits both clouds'
images and whatever newer driver they roll out, where the CUDA 13 build would fail on any
image that lags behind R580. The CPU-only head installs torch's CPU build: the same torch,
without gigabytes of CUDA libraries it cannot use.
"""

from __future__ import annotations

TORCH_VERSION = "2.13.0"  # as pyproject.toml and requirements.lock pin it

# The GPU nodes' torch: torch==2.13.0+cu128 from PyTorch's CUDA 12.8 index. The wheel pins
# its CUDA libraries (nvidia-*) and triton exactly, so naming it fixes the whole CUDA set.
GPU_WHEEL_TAG = "cu128"
GPU_INDEX_URL = "https://download.pytorch.org/whl/cu128"
CUDA = "12.8"  # torch.version.cuda of that wheel

# The CPU-only nodes' torch (the head): torch==2.13.0+cpu.
CPU_WHEEL_TAG = "cpu"
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"

# The least Linux driver each CUDA runtime needs (NVIDIA's CUDA toolkit release notes,
# "CUDA Toolkit and Corresponding Driver Versions"): what a node's driver is checked against.
MIN_DRIVER = {"12.4": "550.54.14", "12.6": "560.28.03", "12.8": "570.26", "12.9": "575.51.03",
              "13.0": "580.65.06"}

# The GPU workers' images and the oldest driver branch each has: the GCP family names its
# branch (...-nvidia-570); AWS's Base AMI has shipped R570 since its 2025 releases and newer
# branches since, and `latest` only moves forward.
IMAGES = {
    "cluster.yaml": {
        "image": "resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
                 "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
        "driver_branch": 570},
    "cluster-gcp.yaml": {
        "image": "projects/deeplearning-platform-release/global/images/family/"
                 "common-cu128-ubuntu-2204-nvidia-570",
        "driver_branch": 570},
}


def version_tuple(version: str) -> tuple[int, ...]:
    """'570.133.20' -> (570, 133, 20); a ValueError for anything else."""
    parts = version.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a driver version: {version!r}")
    return tuple(int(p) for p in parts)


def min_driver(cuda: str) -> str | None:
    """The least driver for a CUDA runtime version such as '12.8' (None: not in the table)."""
    major_minor = ".".join(cuda.split(".")[:2])
    return MIN_DRIVER.get(major_minor)


def gpu_torch() -> str:
    """The GPU nodes' torch requirement, as requirements-gpu.lock states it."""
    return f"torch=={TORCH_VERSION}+{GPU_WHEEL_TAG}"


def cpu_torch() -> str:
    """The CPU nodes' torch requirement, as requirements-cpu.lock states it."""
    return f"torch=={TORCH_VERSION}+{CPU_WHEEL_TAG}"
