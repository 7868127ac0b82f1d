"""Check a GPU node's CUDA stack when it starts: `python -m raymem.nodecheck`.

cluster.yaml and cluster-gcp.yaml run it as the GPU workers' last setup command. A node
whose driver is older than its torch's CUDA needs, whose torch is a CPU build or another
CUDA build than raymem/gpu_stack.py names, or whose torch sees no GPU, fails its setup
with one message (exit 1), and the autoscaler never gives it a trial; without the check
every trial sent to it would fail on its own.

Prints one line and exits 0 when the node is fit.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from raymem import gpu_stack

NVIDIA_SMI = ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"]


@dataclass
class NodeFacts:
    """What the check looks at; read from the node by `read_facts`, given by tests."""
    nvidia_smi: str | None  # nvidia-smi's output, None when it is missing or failed
    torch_version: str      # torch.__version__, e.g. 2.13.0+cu128
    torch_cuda: str | None  # torch.version.cuda: None for a CPU build
    cuda_available: bool    # torch.cuda.is_available()
    smi_error: str = ""     # why nvidia-smi gave nothing


def parse_nvidia_smi(output: str) -> list[tuple[str, str]]:
    """(driver version, GPU name) per GPU from `nvidia-smi --query-gpu=driver_version,name
    --format=csv,noheader` output."""
    gpus = []
    for line in output.strip().splitlines():
        if line.strip():
            driver, _, name = line.partition(",")
            gpus.append((driver.strip(), name.strip()))
    return gpus


def problems(facts: NodeFacts, cuda: str = gpu_stack.CUDA) -> list[str]:
    """What is wrong with the node's stack (empty: nothing)."""
    found = []
    if facts.nvidia_smi is None:
        found.append(f"no NVIDIA driver: nvidia-smi did not run ({facts.smi_error or 'not found'}); "
                     f"the image has no driver")
        gpus = []
    else:
        gpus = parse_nvidia_smi(facts.nvidia_smi)
        if not gpus:
            found.append("nvidia-smi lists no GPU")
    wanted = gpu_stack.gpu_torch()
    if facts.torch_cuda is None:
        found.append(f"torch {facts.torch_version} is a CPU build; GPU nodes need {wanted} from "
                     f"{gpu_stack.GPU_INDEX_URL} (requirements-gpu.lock)")
    elif facts.torch_cuda.split(".")[:2] != cuda.split(".")[:2]:
        found.append(f"torch {facts.torch_version} is built for CUDA {facts.torch_cuda}, raymem's GPU "
                     f"nodes use CUDA {cuda} ({wanted} from {gpu_stack.GPU_INDEX_URL})")
    if gpus and facts.torch_cuda is not None:
        driver = gpus[0][0]
        least = gpu_stack.min_driver(facts.torch_cuda)
        try:
            too_old = least is not None and gpu_stack.version_tuple(driver) < gpu_stack.version_tuple(least)
        except ValueError:
            found.append(f"nvidia-smi gave an unreadable driver version {driver!r}")
            too_old = False
        if too_old:
            found.append(f"NVIDIA driver {driver} is older than {least}, the least CUDA {facts.torch_cuda} "
                         f"(torch {facts.torch_version}) needs: use an image with a newer driver "
                         f"(raymem/gpu_stack.py IMAGES) or torch's build for this driver")
    if not facts.cuda_available and not found:
        found.append(f"torch.cuda.is_available() is False although nvidia-smi lists "
                     f"{len(gpus)} GPU(s) with driver {gpus[0][0]}")
    return found


def summary(facts: NodeFacts) -> str:
    gpus = parse_nvidia_smi(facts.nvidia_smi or "")
    names = ", ".join(sorted({name for _, name in gpus}))
    return (f"driver {gpus[0][0] if gpus else '?'}, torch {facts.torch_version} (CUDA {facts.torch_cuda}), "
            f"{len(gpus)} GPU(s): {names}")


def read_facts() -> NodeFacts:
    import torch

    try:
        smi = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=60)
        output, error = (smi.stdout, "") if smi.returncode == 0 else (None, smi.stderr.strip()[:200])
    except (OSError, subprocess.TimeoutExpired) as exc:
        output, error = None, str(exc)
    return NodeFacts(output, torch.__version__, torch.version.cuda, torch.cuda.is_available(), error)


def main() -> int:
    facts = read_facts()
    if found := problems(facts):
        print("raymem nodecheck: this GPU node cannot run raymem's GPU trials: " + "; ".join(found),
              file=sys.stderr)
        return 1
    print(f"raymem nodecheck: ok: {summary(facts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
