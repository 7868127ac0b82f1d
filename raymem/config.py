"""The study file: schema, defaults (the published settings) and loading with clear errors.

Every section forbids unknown keys, so a typo is an error, not a silently ignored
setting. Defaults are the full-scale published settings (Dankers & Titov, 2024); small studies
such as studies/demo.yaml override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from raymem.errors import ConfigError, did_you_mean

Split = Literal["train", "validation", "test"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Hardware(Strict):
    """What a trial or actor runs on. `device: auto` takes the GPU Ray assigned (gpus > 0),
    else the CPU; `precision: auto` is bf16 on GPUs that support it, fp32 on CPU. Neither
    enters trial ids: they change results only by float rounding."""
    cpus: float = Field(1.0, gt=0)
    # A fraction (0.25, 0.5) packs several trials on one GPU: see the README.
    gpus: float = Field(0.0, ge=0)
    device: Device = "auto"
    precision: Precision = "auto"


class Resources(Hardware):
    """Per Tune trial: CPUs and GPUs (fractions allowed), device and precision."""


class ActorPool(Hardware):
    """Per Ray Data actor, and how far the pool may scale."""
    min_size: int = Field(1, ge=1)
    max_size: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _sizes(self):
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is below min_size ({self.min_size})")
        return self


class PrecogConfig(Strict):
    enabled: bool = True
    # PreCog costs one forward per token of an example; the analysis needs the eval split.
    splits: list[Split] = Field(default_factory=lambda: ["test"], min_length=1)
    k: list[int] = Field(default_factory=lambda: [1, 50], min_length=1)
    unit: Literal["subword", "word"] = "subword"
    masking: Literal["single", "random15"] = "single"
    draws: int = Field(5, ge=1)
    copies_per_batch: int = Field(512, ge=1)
    examples_per_batch: int = Field(64, ge=1)
    max_length: int = Field(512, ge=8)
    actors: ActorPool = ActorPool()

    @field_validator("k")
    @classmethod
    def _positive(cls, ks):
        if any(k < 1 for k in ks):
            raise ValueError("every k must be at least 1")
        return sorted(set(ks))


class FinetuneConfig(Strict):
    enabled: bool = True
    variants: list[Literal["clean", "noisy"]] = Field(default_factory=lambda: ["clean", "noisy"],
                                                      min_length=1)
    epochs: int = Field(50, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=8)
    warmup: float = Field(0.1, ge=0, le=1)
    clip: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    freeze_embeddings: bool = True
    memorised_f1: float = Field(0.993, gt=0, le=1)
    resources: Resources = Resources()
    # Times Tune restarts a trial whose worker or node was lost (spot preemption).
    max_failures: int = Field(2, ge=0)
    # A training trial keeps a resume checkpoint every this many epochs (0: none), so a
    # restarted trial goes on from there; it is deleted when the trial finishes.
    checkpoint_every: int = Field(1, ge=0)


class CounterfactualConfig(Strict):
    """Subset models per task; they train with the finetune settings (and resources)."""
    enabled: bool = False
    n_models: int = Field(30, ge=2)
    subset_seed: int = 1
    epochs: int | None = Field(None, ge=1)  # default: finetune.epochs


class ControlConfig(Strict):
    """The control setup: memorisation planted in a known layer pair (Dankers & Titov, 2024)."""
    enabled: bool = False
    auxiliary_task: str = "tweet_polarity"  # clean second task; its head updates all layers
    epochs: int | None = Field(None, ge=1)  # default: finetune.epochs
    # default: {1,2}, {L/2, L/2+1}, {L-1, L}
    pairs: list[tuple[int, int]] | None = None

    @field_validator("pairs")
    @classmethod
    def _adjacent(cls, pairs):
        for a, b in pairs or []:
            if b != a + 1:
                raise ValueError(f"a planted pair is two adjacent layers, got [{a}, {b}]")
        return pairs


class LocaliseConfig(Strict):
    enabled: bool = False
    # names from raymem/localise/registry.py
    techniques: list[str] = Field(
        default_factory=lambda: ["swapping", "retraining", "gradients", "probing", "centroids"], min_length=1)
    retrain_epochs: int = Field(5, ge=1)
    retrain_lr: float = Field(3e-5, gt=0)
    retrain_batch_size: int = Field(8, ge=1)
    probe_seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    probe_epochs: int = Field(20, ge=1)
    resources: Resources = Resources()
    actors: ActorPool = ActorPool()  # hidden-state extraction
    control: ControlConfig = ControlConfig()

    @field_validator("techniques")
    @classmethod
    def _registered(cls, techniques):
        from raymem.localise.registry import TECHNIQUES

        unknown = [t for t in techniques if t not in TECHNIQUES]
        if unknown:
            raise ValueError(f"unknown technique {unknown[0]!r}{did_you_mean(unknown[0], TECHNIQUES)}; "
                             f"known: {', '.join(TECHNIQUES)}")
        return techniques


class UserTask(Strict):
    """A task from local files: one file per split."""
    name: str
    files: dict[Split, str]
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_field: str
    label_names: list[str] = Field(min_length=2)


# A registry name or an inline user task; the tag makes errors name the user's own keys.
TaskEntry = Annotated[
    Union[Annotated[str, Tag("registry task")], Annotated[UserTask, Tag("user task")]],
    Discriminator(lambda v: "registry task" if isinstance(v, str) else "user task" if isinstance(v, dict)
                  else None, custom_error_type="task",
                  custom_error_message="expected a task name or a mapping describing a user task")]


class RayConfig(Strict):
    address: str | None = None  # None: connect to RAY_ADDRESS if set, else start a local Ray
    num_cpus: int | None = Field(None, ge=1)


class Study(Strict):
    study: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    results: str = "results"
    database: str | None = None  # default: <results>/raymem.duckdb (local results only)
    models: list[str] = Field(default_factory=lambda: ["raymem-mini"], min_length=1)
    tasks: list[TaskEntry] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    data_seed: int = 1
    noise_ratio: float = Field(0.15, ge=0, lt=1)
    # Keep only training examples whose annotators agreed at least this much (the corpus's
    # annotator_confidence; examples without one are dropped), so that the planted label
    # noise is the only label noise in training. None keeps every example.
    train_min_annotator_confidence: float | None = Field(None, gt=0, le=1)
    subsample: dict[Split, int] = Field(default_factory=dict)
    # stratified: each class keeps its share of the split (the first examples of each class
    # in example-id order); first: the first n in example-id order, whatever their classes
    subsample_strategy: Literal["stratified", "first"] = "stratified"
    eval_split: Split = "test"
    bin_width: float = Field(0.1, gt=0, le=1)
    precog: PrecogConfig = PrecogConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    counterfactual: CounterfactualConfig = CounterfactualConfig()
    localise: LocaliseConfig = LocaliseConfig()
    ray: RayConfig = RayConfig()

    @field_validator("subsample")
    @classmethod
    def _subsample(cls, sizes):
        if any(n < 1 for n in sizes.values()):
            raise ValueError("subsample sizes must be at least 1")
        return sizes

    def task_names(self) -> list[str]:
        return [t if isinstance(t, str) else t.name for t in self.tasks]


def _location(loc: tuple) -> str:
    # pydantic reports union branches (tags) as extra path parts; keep the user's own keys.
    return ".".join(str(p) for p in loc if p not in ("registry task", "user task", "[key]"))


def load_study(path: str | Path, overrides: dict | None = None) -> Study:
    """Read and validate a study file; raise ConfigError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    raw.update(overrides or {})
    try:
        return Study.model_validate(raw)
    except ValidationError as exc:
        # An unknown key is the cause, a "required" error for the key it misspells the effect.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        if first["type"] == "extra_forbidden":
            key = str(first["loc"][-1])
            raise ConfigError(f"{path}: {_location(first['loc'])}: unknown key{_suggest(key, first['loc'])}"
                              f"{more}") from exc
        raise ConfigError(f"{path}: {_location(first['loc'])}: {first['msg']}"
                          f" (got {first.get('input')!r}){more}") from exc


def _fields_at(loc: tuple) -> list[str]:
    """The keys allowed where `loc` (a pydantic error location) points."""
    model = Study
    for part in loc[:-1]:
        if part == "user task":
            model = UserTask
        elif isinstance(part, str) and part in getattr(model, "model_fields", {}):
            annotation = model.model_fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else model
    return list(getattr(model, "model_fields", {}))


def _suggest(key: str, loc: tuple) -> str:
    return f" {key!r}{did_you_mean(key, _fields_at(loc))}"
