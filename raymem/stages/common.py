"""Small pieces every stage shares: how its trials run."""

from __future__ import annotations

from raymem.config import Hardware


def runtime_options(hardware: Hardware, checkpoint_every: int = 0) -> dict:
    """A trial's `runtime` field: its resources, device, precision and checkpointing."""
    return {**hardware.model_dump(), "checkpoint_every": checkpoint_every}

