"""The runtime a trial or Ray Data actor runs in.

It owns everything about *how* work runs, so that stages only say *what* runs:

- the device: the GPU Ray gave the worker (`ray.get_gpu_ids()`, else CUDA_VISIBLE_DEVICES),
  else the CPU; a study's `device: cpu | cuda` overrides it per stage;
- precision: autocast for forward passes (`bf16` by default where the device multiplies it
  natively: GPUs that support it without emulation, CPUs with AVX-512 BF16 or AMX; else
  `fp32`); losses, softmax and log-probabilities are computed in fp32 by the callers; fp32
  on a GPU means full fp32 matmuls (TF32 off), and a run that TF32 reached anyway is
  recorded as `tf32`;
- reproducibility: with `deterministic`, torch's deterministic algorithms and cuBLAS's
  fixed workspace (CUBLAS_WORKSPACE_CONFIG, set before CUDA starts in the process);
- threads and seeding: every trial starts from its own seed, so a reused Tune worker
  carries no random state from one trial to the next;
- models and tokenizers loaded onto the device, checkpoints saved to and read from the store;
- progress reports to Tune, the resume state of a training loop (`TrainingState`), and
  the finished parts of a grouped trial (`keep_part`, `kept_parts`).

Library code (raymem/localise/, raymem/train.py) follows the device of the model it is
given and runs inside the autocast context the runtime opens; it never picks a device.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from raymem.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROGRESS = "progress.pt"
PARTS = "parts"  # a grouped trial's finished parts, one JSON file each
# For tests of lost workers only: a folder where a trial, after keeping each epoch, says so
# and waits to be let go (see Runtime.hold_for_tests).
HOLD_DIR = "RAYMEM_TESTING_HOLD_DIR"


def assigned_gpu_ids() -> list[str]:
    """The GPUs Ray gave this worker, else those CUDA_VISIBLE_DEVICES names (none: [])."""
    ray = sys.modules.get("ray")  # not imported: this process is no Ray worker
    if ray is not None and ray.is_initialized():
        ids = ray.get_gpu_ids()
        if ids:
            return [str(i) for i in ids]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [v.strip() for v in visible.split(",") if v.strip() not in ("", "-1")]


def choose_device(setting: str = "auto", gpu_ids: list[str] | None = None,
                  cuda_available: bool | None = None) -> torch.device:
    """`cpu`; or the first visible GPU when one is assigned (auto) or asked for (cuda).

    Ray restricts CUDA_VISIBLE_DEVICES to the worker's own GPUs, so its GPU is cuda:0.
    A GPU that was assigned or asked for but that CUDA cannot see is an error, never a
    silent CPU run."""
    if setting not in DEVICES:
        raise ConfigError(f"device: expected one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cpu":
        return torch.device("cpu")
    ids = assigned_gpu_ids() if gpu_ids is None else gpu_ids
    if setting == "cuda" or ids:
        available = torch.cuda.is_available() if cuda_available is None else cuda_available
        if not available:
            given = f"Ray gave this worker GPU {', '.join(ids)}" if ids else "device: cuda was set"
            raise ConfigError(f"device: {given}, but this node has no CUDA device "
                              f"(torch.cuda.is_available() is False); run on a GPU node, or set "
                              f"`device: cpu` (and `gpus: 0`) for this stage")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 dot products or AMX
    tiles). Elsewhere oneDNN emulates bf16, and a training step takes 1.8x (AVX-512) to 8x
    (AVX2) fp32's time (benchmarks/cpu_bf16.py)."""
    cpu = torch.cpu
    return any(getattr(cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported",
                                                                  "_is_amx_tile_supported"))


def choose_precision(setting: str, device: torch.device) -> str:
    """`auto`: bf16 where the device multiplies it natively (a GPU that supports it, a CPU
    with AVX-512 BF16 or AMX), else fp32."""
    if setting not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting != "auto":
        return setting
    if device.type == "cuda":  # pre-Ampere GPUs emulate bf16: slower than fp32, so fp32 there
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_multiplies_bf16() else "fp32"


def use_full_fp32_matmuls() -> None:
    """TF32 off: a study that asks for fp32 on a GPU gets fp32 products, not TF32's 10-bit
    mantissas (bf16, the default, is the fast path; PreCog's fp32 ranking relies on this).
    torch's newer fp32_precision API only: mixing it with allow_tf32 is an error in torch."""
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.fp32_precision = "ieee"


def tf32_matmuls() -> bool:
    """Whether fp32 matmuls on a GPU run as TF32 (set through either of torch's APIs, or
    forced by TORCH_ALLOW_TF32_CUBLAS_OVERRIDE)."""
    return (torch.backends.cuda.matmul.fp32_precision == "tf32"
            or os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1")


def recorded_precision(precision: str, device: torch.device) -> str:
    """What `runs.precision` records: the setting, or `tf32` for fp32 on a GPU with TF32 on."""
    return "tf32" if precision == "fp32" and device.type == "cuda" and tf32_matmuls() else precision


CUBLAS_WORKSPACE = ":4096:8"  # a fixed cuBLAS workspace, as torch's reproducibility notes ask


def set_deterministic(on: bool) -> None:
    """Deterministic algorithms on or off, in this process (a reused worker: every trial).

    cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, when CUDA starts: set too late, the claim
    would be false, so that is an error rather than a quiet nondeterministic run."""
    if on:
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            if torch.cuda.is_initialized():
                raise RuntimeError("deterministic: CUDA started in this worker before "
                                   "CUBLAS_WORKSPACE_CONFIG was set (a trial without `deterministic` "
                                   "ran here first); give every stage the same `deterministic` setting")
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def device_name(device: torch.device) -> str:
    """What `runs.device` records, e.g. `cuda:0 NVIDIA A10G` or `cpu`."""
    if device.type != "cuda":
        return "cpu"
    index = device.index or 0
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on `device`: through pinned memory without waiting for the copy on a GPU."""
    if device.type == "cpu":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global streams (CPU and every GPU); a new generator for the data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class TrainingState:
    """What a training loop needs to resume where it stopped: objects with state_dict()
    (model, optimiser, schedule, grad scaler, ...), the data-order generator, and the
    caller's own state (e.g. the memorised epoch so far; tensors, numbers, lists)."""
    parts: dict[str, Any]
    generator: torch.Generator
    extra: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


class Runtime:
    """Device, precision, threads, seeds, models, checkpoints and progress of one trial or actor."""

    def __init__(self, device: str = "auto", precision: str = "auto", threads: int | None = None,
                 store=None, trial_id: str | None = None,
                 report: Callable[..., None] | None = None, checkpoint_every: int = 1,
                 deterministic: bool = False):
        set_deterministic(deterministic)  # first: before anything starts CUDA
        self.device = choose_device(device)
        self.precision = choose_precision(precision, self.device)
        if threads:  # a reused worker may have run a trial with another count: set it every time
            torch.set_num_threads(threads)
        if self.device.type == "cuda":
            use_full_fp32_matmuls()
        self.store, self.trial_id = store, trial_id
        self._report = report or (lambda **_: None)
        self.checkpoint_every = checkpoint_every
        self.info: dict[str, Any] = {"device": device_name(self.device),
                                     "precision": recorded_precision(self.precision, self.device),
                                     "storage_bytes": 0}

    @classmethod
    def for_trial(cls, trial, report=None) -> "Runtime":
        from raymem.store import Store

        options = dict(trial.runtime)
        cpus = options.get("cpus")
        return cls(options.get("device", "auto"), options.get("precision", "auto"),
                   max(1, int(cpus)) if cpus else None, Store(trial.results), trial.trial_id, report,
                   options.get("checkpoint_every", 1), options.get("deterministic", False))

    # -- seeds and precision ----------------------------------------------------------
    def seed(self, seed: int) -> torch.Generator:
        return seed_everything(seed)

    def autocast(self):
        """Mixed precision for the forward passes inside; nothing on fp32.

        Without torch's cast cache: it keeps each weight's low-precision cast until the
        outermost autocast exits, and trials change weights in place inside one (retraining
        reloads and trains windows, the gradients' control model trains its head), so the
        cache would serve forwards the weights as they were before (tests/test_runtime.py).
        Casting each weight per forward costs little beside the forward itself."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision], cache_enabled=False)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return to_device(batch, self.device)

    # -- models -----------------------------------------------------------------------
    def load_tokenizer(self, model: str, max_length: int | None = None):
        from raymem.models import load_tokenizer, model_spec

        return load_tokenizer(model_spec(model), max_length)

    def load_classifier(self, model: str, n_labels: int, pad_token_id: int | None = None):
        from raymem.models import load_classifier, model_spec

        return load_classifier(model_spec(model), n_labels, pad_token_id).to(self.device)

    def on_device(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module a stage builds itself (e.g. an extra head), moved to the device."""
        return module.to(self.device)

    def load_masked_lm(self, model: str):
        from raymem.models import load_masked_lm, model_spec

        return load_masked_lm(model_spec(model)).to(self.device)

    def load_checkpoint(self, trial_id: str, names: tuple[str, ...]):
        """The first of the checkpoints `names` (e.g. memorised, else final) that trial saved."""
        from transformers import AutoModelForSequenceClassification

        from raymem.models import quiet_transformers

        quiet_transformers()
        for name in names:
            if self.store.exists("checkpoints", trial_id, name):
                with tempfile.TemporaryDirectory() as tmp:
                    self.store.get_dir(tmp, "checkpoints", trial_id, name)
                    model = AutoModelForSequenceClassification.from_pretrained(tmp)  # safetensors
                return model.to(self.device).eval()
        raise FileNotFoundError(f"trial {trial_id} saved none of the checkpoints {names}")

    def save_checkpoint(self, model, name: str) -> None:
        """Save `model` (safetensors) as this trial's checkpoint `name`."""
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            self.store.put_dir(tmp, "checkpoints", self.trial_id, name)

    # -- progress ---------------------------------------------------------------------
    def report(self, **metrics) -> None:
        self._report(**metrics)

    def resume(self, state: TrainingState) -> int:
        """Load the trial's last progress checkpoint into `state`; return the epoch to start at."""
        if not self.checkpoint_every or self.store is None or not self.store.exists(
                "checkpoints", self.trial_id, PROGRESS):
            return 1
        saved = torch.load(io.BytesIO(self.store.get_bytes("checkpoints", self.trial_id, PROGRESS)),
                           map_location="cpu", weights_only=True)
        for name, part in state.parts.items():
            part.load_state_dict(saved["parts"][name])
        state.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if self.device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        state.extra.update(saved["extra"])
        state.losses[:] = saved["losses"]
        self.info["resumed_from_epoch"] = saved["epoch"] + 1
        return saved["epoch"] + 1

    def save_progress(self, state: TrainingState, epoch: int) -> None:
        """Keep where training stands after `epoch` (every `checkpoint_every` epochs)."""
        self.info["epochs_trained"] = self.info.get("epochs_trained", 0) + 1
        if not self.checkpoint_every or self.store is None or epoch % self.checkpoint_every:
            return
        saved = {"epoch": epoch, "parts": {n: p.state_dict() for n, p in state.parts.items()},
                 "generator": state.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                 "extra": state.extra, "losses": list(state.losses)}
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        self.store.put_bytes(buffer.getvalue(), "checkpoints", self.trial_id, PROGRESS)
        self.hold_for_tests(epoch)

    def hold_for_tests(self, epoch: int) -> None:
        """Only where $RAYMEM_TESTING_HOLD_DIR is set (tests of lost workers): write
        TRIAL_ID.json there with the kept epoch and this process's pid, and wait while it
        stays (a minute at most). A test can then kill the worker at a known epoch however
        fast the epochs run, or delete the file to let it go on."""
        folder = os.environ.get(HOLD_DIR)
        if not folder:
            return
        path = os.path.join(folder, f"{self.trial_id}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"epoch": epoch, "pid": os.getpid()}, f)
        os.replace(path + ".tmp", path)  # whole, never half-written, when the test reads it
        deadline = time.monotonic() + 60
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)

    def kept_parts(self) -> dict[str, dict]:
        """The parts of a grouped trial (e.g. retraining windows) kept by an earlier attempt."""
        if self.store is None or not self.trial_id:
            return {}
        names = [n for n in self.store.files("checkpoints", self.trial_id, PARTS) if n.endswith(".json")]
        self.info["resumed_parts"] = len(names)
        return {n[:-len(".json")]: json.loads(self.store.get_bytes("checkpoints", self.trial_id, PARTS, n))
                for n in names}

    def keep_part(self, key: str, value: dict) -> None:
        """Keep one finished part of a grouped trial, so that a restarted attempt skips it."""
        if self.store is not None and self.trial_id:
            self.store.put_bytes(json.dumps(value).encode(), "checkpoints", self.trial_id, PARTS, f"{key}.json")

    def finish_training(self) -> None:
        """Training is over: note what the trial's named checkpoints take in the store.

        Its progress checkpoint and kept parts stay until the trial's results are written
        and it is marked done (`discard_progress`, called by the sweep): a trial whose
        results cannot be written (a full disk, a lost worker) resumes from its last epoch."""
        if self.store is not None and self.trial_id:
            self.info["storage_bytes"] = (self.store.size("checkpoints", self.trial_id)
                                          - self.store.file_size("checkpoints", self.trial_id, PROGRESS)
                                          - self.store.size("checkpoints", self.trial_id, PARTS))

    def discard_progress(self) -> None:
        """The trial is done (results written, marker down): its resume state goes."""
        if self.store is not None and self.trial_id:
            self.store.delete("checkpoints", self.trial_id, PROGRESS)
            self.store.delete("checkpoints", self.trial_id, PARTS)
