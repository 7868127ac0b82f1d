"""The study file: schema, defaults (the published settings) and loading with clear errors.

Every section forbids unknown keys, so a typo is an error, not a silently ignored
setting. Defaults are the full-scale published settings (Dankers & Titov, 2024); small studies
such as studies/demo.yaml override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from raymem.errors import ConfigError, did_you_mean

Split = Literal["train", "validation", "test"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_duplicates(values: list, what: str = "value") -> list:
    """A list that means a set: the same entry twice is a mistake (a seed run twice, a
    model trained twice), never silently dropped."""
    seen = set()
    for value in values:
        key = tuple(value) if isinstance(value, list) else value
        if key in seen:
            raise ValueError(f"{what} {value!r} is given twice")
        seen.add(key)
    return values


def _registered(names: list[str], registry, what: str) -> list[str]:
    """Names of a registry's entries (checked without importing them), each once."""
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}{did_you_mean(unknown[0], registry)}; "
                         f"known: {', '.join(registry)}")
    return _no_duplicates(names, what)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of a YAML file names the same key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML would keep the
    last one silently, and a study file's earlier setting would be lost without a word."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first:
                        raise DuplicateKeyError(
                            None, None, f"key {key!r} is given twice (first on line {first[key]})",
                            key_node.start_mark)
                    first[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    pass
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """YAML as a study file or a --set value is read: safe, and no key given twice."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Hardware(Strict):
    """What a trial or actor runs on. Neither device nor precision enters trial ids: they
    change results only by float rounding."""
    cpus: float = Field(1.0, gt=0, description="CPUs reserved per trial or actor; also its torch thread count")
    gpus: float = Field(0.0, ge=0, description="GPUs reserved per trial or actor; a fraction (0.25, 0.5) packs "
                                               "several on one GPU (docs/clusters.md: packing)")
    device: Device = Field("auto", description="auto: the GPU Ray assigned (gpus > 0), else the CPU; cpu or cuda "
                                               "force one")
    precision: Precision = Field("auto", description="autocast precision of forward passes; auto: bf16 where the "
                                                     "device multiplies it natively (GPUs that support it, "
                                                     "CPUs with AVX-512 BF16 or AMX), else fp32")


class Resources(Hardware):
    """Per Tune trial: CPUs and GPUs (fractions allowed), device, precision, reproducibility."""
    deterministic: bool = Field(False, description="torch's deterministic algorithms and a fixed cuBLAS "
                                                   "workspace (CUBLAS_WORKSPACE_CONFIG), so a trial run twice "
                                                   "on the same GPU gives the same bits; slower, and not part "
                                                   "of trial ids")


class ActorPool(Hardware):
    """Per Ray Data actor, and how far the pool may scale."""
    min_size: int = Field(1, ge=1, description="actors the pool starts with")
    max_size: int = Field(2, ge=1, description="actors the pool may grow to; PreCog's study holds their "
                                               "CPUs and GPUs from the start until it is done")

    @model_validator(mode="after")
    def _sizes(self):
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is below min_size ({self.min_size})")
        return self


class PrecogConfig(Strict):
    """PreCog (Ranaldi et al., 2023): how much of each example the pre-trained masked-LM reconstructs."""
    enabled: bool = Field(True, description="score PreCog (masked-LM models only)")
    # PreCog costs one forward per token of an example; the analysis needs the eval split.
    splits: list[Split] = Field(default_factory=lambda: ["test"], min_length=1,
                                description="splits to score (one forward per token of each example)")
    k: list[int] = Field(default_factory=lambda: [1, 50], min_length=1,
                         description="a unit counts as recovered when it is in the top k; one score per k")
    unit: Literal["subword", "word"] = Field("subword", description="what is masked and recovered: a subword "
                                                                     "token or a whole word")
    masking: Literal["single", "random15"] = Field("single", description="single: one unit masked per copy; "
                                                                         "random15: 15% of units, `draws` times")
    draws: int = Field(5, ge=1, description="random15 only: masked copies per example")
    copies_per_batch: int = Field(512, ge=1, description="masked copies per forward pass")
    examples_per_batch: int = Field(64, ge=1, description="examples per Ray Data batch")
    max_length: int = Field(512, ge=8, description="tokens kept per example (and at most the model's positions)")
    actors: ActorPool = Field(ActorPool(), description="the scoring actor pool")

    @field_validator("k")
    @classmethod
    def _positive(cls, ks):
        if any(k < 1 for k in ks):
            raise ValueError("every k must be at least 1")
        return sorted(_no_duplicates(ks, "k"))

    @field_validator("splits")
    @classmethod
    def _distinct_splits(cls, splits):
        return _no_duplicates(splits, "split")


class FinetuneConfig(Strict):
    """Fine-tuning trials: per task, model, seed and variant (Dankers & Titov, 2024)."""
    enabled: bool = Field(True, description="fine-tune the models")
    variants: list[Literal["clean", "noisy"]] = Field(
        default_factory=lambda: ["clean", "noisy"], min_length=1,
        description="clean: original labels; noisy: with noise_ratio of them relabelled")

    @field_validator("variants")
    @classmethod
    def _distinct_variants(cls, variants):
        return _no_duplicates(variants, "variant")
    epochs: int = Field(50, ge=1, description="training epochs")
    lr: float = Field(1e-5, gt=0, description="AdamW peak learning rate")
    batch_size: int = Field(8, ge=1, description="examples per training step")
    max_length: int = Field(512, ge=8, description="tokens kept per example (and at most the model's positions)")
    warmup: float = Field(0.1, ge=0, le=1, description="share of the steps the learning rate warms up over, "
                                                      "then decays linearly to 0")
    clip: float = Field(1.0, gt=0, description="gradient norm clipping")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (torch's default, as the original)")
    freeze_embeddings: bool = Field(True, description="keep the embedding block frozen")
    batch_order: Literal["shuffled", "length_sorted"] = Field(
        "shuffled", description="training batches: uniformly shuffled (the original's) or sorted by length within "
                                "pools of 50 batches, then shuffled (a speed setting: less padding)")
    memorised_f1: float = Field(0.993, gt=0, le=1, description="training macro-F1 at which the 'memorised' "
                                                               "checkpoint is kept (first epoch to reach it)")
    resources: Resources = Field(Resources(), description="per training trial (fine-tuning, subset and "
                                                          "control models)")
    max_failures: int = Field(2, ge=0, description="times Tune restarts a trial whose worker or node was lost "
                                                   "(spot preemption)")
    checkpoint_every: int = Field(1, ge=0, description="a training trial keeps a resume checkpoint every this "
                                                       "many epochs (0: none); deleted when it finishes")


class SearchSpace(Strict):
    """The training settings the search tries: a list of values for each (a list of one fixes it)."""
    lr: list[float] = Field(default_factory=lambda: [1e-5, 3e-5, 1e-4], min_length=1,
                            description="AdamW peak learning rates tried")
    epochs: list[int] = Field(default_factory=lambda: [10, 20], min_length=1, description="epoch budgets tried")
    batch_size: list[int] = Field(default_factory=lambda: [8, 16], min_length=1, description="batch sizes tried")

    @model_validator(mode="after")
    def _positive(self):
        for key in ("lr", "epochs", "batch_size"):
            if any(v <= 0 for v in getattr(self, key)):
                raise ValueError(f"{key}: every value must be above 0 (got {getattr(self, key)})")
            try:  # the same value twice would train the same candidate twice
                _no_duplicates(getattr(self, key))
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return self

    def size(self) -> int:
        return len(self.lr) * len(self.epochs) * len(self.batch_size)


class SearchConfig(Strict):
    """Training settings chosen per (task, model) on the validation split by a Ray Tune search with
    ASHA early stopping; fine-tuning, subset, control and retraining models then use the winner."""
    enabled: bool = Field(False, description="search the settings of `space` before fine-tuning (off: the "
                                             "finetune settings as given)")
    space: SearchSpace = Field(SearchSpace(), description="the values tried")
    algorithm: Literal["grid", "random"] = Field("grid", description="grid: every combination of `space`; "
                                                                     "random: `samples` of them, drawn by `seed`")
    samples: int = Field(8, ge=1, description="random only: combinations tried")
    seed: int = Field(0, description="random only: fixes the combinations drawn")
    metric: Literal["accuracy", "macro_f1"] = Field("accuracy", description="the objective: clean validation "
                                                                             "accuracy or macro-F1")
    grace_period: int = Field(2, ge=1, description="ASHA: epochs every candidate trains before it can be stopped")
    reduction_factor: int = Field(2, ge=2, description="ASHA: at each rung, the best 1/reduction_factor go on")
    concurrent: int = Field(1, ge=1, description="candidates trained at once; above 1, which candidates ASHA "
                                                 "stops depends on which reports first, so reruns may differ")
    resources: Resources = Field(Resources(), description="per candidate")


class CounterfactualConfig(Strict):
    """Counterfactual memorisation (Feldman & Zhang, 2020): subset models trained with the
    finetune settings and resources."""
    enabled: bool = Field(False, description="train subset models and score mem / gen per example")
    n_models: int = Field(30, ge=2, description="subset models per task and model, each on a random half")
    subset_seed: int = Field(1, description="fixes the random halves")
    # the original's generalisation-score models (src/submit_scripts/run_training.sh, `--training_type
    # mmap`): 10 epochs at lr 3e-5, not the 50 at 1e-5 of its fine-tuning
    epochs: int | None = Field(10, ge=1, description="epochs per subset model (null: finetune.epochs); "
                                                     "10 as the original's")
    lr: float | None = Field(3e-5, gt=0, description="learning rate of the subset models (null: finetune.lr); "
                                                     "3e-5 as the original's")


class ControlConfig(Strict):
    """The control setup: memorisation planted in a known layer pair (Dankers & Titov, 2024)."""
    enabled: bool = Field(False, description="train control models and score each technique on them")
    auxiliary_task: str = Field("tweet_polarity", description="the clean second task whose head updates "
                                                             "every layer: a registry task or one of the study's")
    epochs: int | None = Field(None, ge=1, description="epochs per control model (null: finetune.epochs)")
    auxiliary_lr: float = Field(5e-6, gt=0, description="the auxiliary task's own AdamW learning rate (the "
                                                        "original's 5e-6, half its main 1e-5)")
    pairs: list[tuple[int, int]] | None = Field(None, description="planted layer pairs, adjacent "
                                                                  "(null: {1,2}, {L/2, L/2+1}, {L-1, L})")
    frozen_model: bool = Field(
        True, description="train a frozen control model per task, model and seed (the auxiliary task moves every "
                          "layer, the noisy task only the head), the original's baseline of the control setup: "
                          "forgetting gradients divide by it, probing scores layer 1 against it; false: the "
                          "head-only model and the pre-trained model's layer 1, as for the studied pairs")

    @field_validator("pairs")
    @classmethod
    def _adjacent(cls, pairs):
        for a, b in pairs or []:
            if b != a + 1:
                raise ValueError(f"a planted pair is two adjacent layers, got [{a}, {b}]")
        _no_duplicates(pairs or [], "planted pair")
        return pairs


class LocaliseConfig(Strict):
    """Localisation (Dankers & Titov, 2024): which layers hold the memorised labels."""
    enabled: bool = Field(False, description="run the localisation techniques on every (noisy, clean) pair")
    techniques: list[str] = Field(
        default_factory=lambda: ["swapping", "retraining", "gradients", "probing", "centroids"], min_length=1,
        description="techniques to run, by name (raymem/localise/registry.py)")
    retrain_epochs: int = Field(5, ge=1, description="layer retraining: epochs per window")
    retrain_lr: float = Field(3e-5, gt=0, description="layer retraining: learning rate")
    retrain_batch_size: int = Field(8, ge=1, description="layer retraining: batch size")
    # probing: the original's settings by default (raymem/localise/probing.py)
    checkpoint: Literal["final", "memorised"] = Field(
        "final", description="the training stage the noisy model and its clean twin are compared at: both final "
                             "(as the original), or the noisy model's memorised epoch and the clean twin trained "
                             "to that same epoch (an extra clean trial per pair); the control setup stays final")
    probe_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1,
                                   description="probing: one probe per layer per seed, F1 averaged")
    probe_epochs: int = Field(100, ge=1, description="probing: epochs per probe")
    probe_lr: float = Field(2e-4, gt=0, description="probing: AdamW learning rate")
    probe_weight_decay: float = Field(1e-5, ge=0, description="probing: AdamW weight decay")
    probe_batch_size: int = Field(32, ge=1, description="probing: examples per step")
    probe_dropout: float = Field(0.1, ge=0, lt=1, description="probing: dropout rate")
    probe_dropout_on: Literal["input", "hidden"] = Field("input", description="probing: dropout on the "
                                                         "probe's input (the original) or after its hidden layers")
    probe_class_weights: Literal["original", "balanced"] = Field(
        "original", description="probing: loss weights clean / noisy, 0.33 / 0.67 (the original) or balanced")
    probe_select_after: int = Field(26, ge=1, description="probing: the best validation F1 is picked among "
                                                          "epochs from this one on (the original: 26)")
    probe_standardise: bool = Field(False, description="probing: standardise each layer's inputs with "
                                                       "training statistics (the original does not)")
    probe_split_by: Literal["random", "stratified"] = Field(
        "random", description="probing: the 70/10/20 split, shuffled (the original) or stratified on noisy")
    probe_baseline: Literal["pretrained", "embeddings"] = Field(
        "pretrained", description="probing: what layer 1's F1 gain is measured against: a probe on the "
                                  "pre-trained model's layer 1 (the original) or on the fine-tuned model's "
                                  "embeddings (an encoder's [CLS] there is one vector: a constant predictor)")
    probe_label_events: bool = Field(True, description="probing: class probes on the training and the original "
                                                       "labels, for the consolidation events (probe_memorisation, "
                                                       "probe_initiation) and `probe_curves`; the studied pair only")
    gradient_norm: Literal["l1", "l2"] = Field("l1", description="forgetting gradients: the norm over a "
                                                                "layer's parameters (l1 as published)")
    gradient_subtract_clean: bool = Field(True, description="forgetting gradients: the noisy set's mean "
                                                            "gradient minus the clean set's (as published), "
                                                            "or the noisy set's alone")
    gradient_loss: Literal["log_softmax", "raw_logit_nll"] = Field(
        "log_softmax", description="forgetting gradients: the loss whose negative is differentiated: "
                                   "cross-entropy (log-softmax), or the original's NLL applied to the raw "
                                   "logits (the label's logit: reproduces the published numbers)")
    gradient_control: bool = Field(True, description="forgetting gradients: divide by a head-only control "
                                                     "model's differences (as published), or not")
    resources: Resources = Field(Resources(), description="per technique trial")
    hidden_resources: Resources = Field(Resources(), description="per hidden-state trial (one per pair, for "
                                                                 "probing and centroids)")
    control: ControlConfig = Field(ControlConfig(), description="the control setup")

    @field_validator("techniques")
    @classmethod
    def _registered(cls, techniques):
        from raymem.localise.registry import TECHNIQUES

        return _registered(techniques, TECHNIQUES, "technique")

    @field_validator("probe_seeds")
    @classmethod
    def _distinct_probe_seeds(cls, seeds):
        return _no_duplicates(seeds, "probe seed")


HubSplits = dict[Split, str]
DataFiles = dict[Split, Union[str, list[str]]]


class UserTask(Strict):
    """A task of the user's data, from one source: local files (`files`), a Hugging Face
    `datasets` builder over local files (`builder` and `data_files`) or a hub dataset (`hf`)."""
    name: str = Field(description="the task's name in every table")
    files: dict[Split, str] | None = Field(None, description="split -> .csv, .parquet or .jsonl file, read "
                                                             "as it is; train is required")
    builder: Literal["csv", "json", "parquet"] | None = Field(
        None, description="with data_files: the `datasets` builder that reads them (json: JSON Lines or "
                          "a JSON array of records)")
    data_files: DataFiles | None = Field(None, description="with builder: split -> a file or a list of "
                                                           "files; train is required")
    hf: str | None = Field(None, description="a Hugging Face hub dataset id (owner/name), loaded by `datasets` "
                                             "(the hub, or its local cache under HF_HUB_OFFLINE=1)")
    subset: str | None = Field(None, description="hf only: the dataset's subset (configuration), e.g. sst2 "
                                                 "of nyu-mll/glue")
    splits: HubSplits | None = Field(None, description="hf only: split -> the hub's split expression, e.g. "
                                                       "{train: 'train[:90%]', validation: 'train[90%:]', test: "
                                                       "validation} (null: train, validation and test as named)")
    revision: str | None = Field(None, description="hf only: the dataset revision (a commit, tag or branch; "
                                                   "null: main); part of trial ids")
    text_fields: list[str] = Field(min_length=1, max_length=2,
                                   description="the text column, or two for a pair task")
    label_field: str = Field(description="the label column: label names or indices 0..n-1")
    label_names: list[str] = Field(min_length=2, description="the classes, in index order")

    @field_validator("label_names")
    @classmethod
    def _distinct_labels(cls, names):
        return _no_duplicates(names, "label name")

    @field_validator("text_fields")
    @classmethod
    def _distinct_fields(cls, fields):
        return _no_duplicates(fields, "text field")

    @model_validator(mode="after")
    def _label_is_not_text(self):
        if self.label_field in self.text_fields:  # the model would read its own labels
            raise ValueError(f"label_field {self.label_field!r} is also one of text_fields")
        return self

    @model_validator(mode="after")
    def _one_source(self):
        sources = [k for k in ("files", "data_files", "hf") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(f"a user task has exactly one of files, data_files (with builder) or hf; "
                             f"got {', '.join(sources) or 'none'}")
        if (self.builder is None) != (self.data_files is None):
            raise ValueError("builder and data_files go together: data_files names the files, builder "
                             "(csv, json or parquet) reads them")
        hub_only = [k for k in ("subset", "splits", "revision") if getattr(self, k) is not None]
        if hub_only and self.hf is None:
            raise ValueError(f"{hub_only[0]} is for hub tasks only (with hf)")
        local = self.files or self.data_files
        if local is not None and "train" not in local:
            raise ValueError(f"{sources[0]} must name a train split")
        return self


# A registry name or an inline user task; the tag makes errors name the user's own keys.
TaskEntry = Annotated[
    Union[Annotated[str, Tag("registry task")], Annotated[UserTask, Tag("user task")]],
    Discriminator(lambda v: "registry task" if isinstance(v, str) else "user task" if isinstance(v, dict)
                  else None, custom_error_type="task",
                  custom_error_message="expected a task name or a mapping describing a user task")]


class MlflowTracker(Strict):
    """An MLflow run per Tune trial (Tune's MLflowLoggerCallback); needs `pip install 'raymem[mlflow]'`."""
    tracking_uri: str | None = Field(None, description="where runs go: file:/abs/path (a local store), "
                                                       "http(s)://server, ... (null: MLFLOW_TRACKING_URI, else "
                                                       "MLflow's default)")
    experiment: str | None = Field(None, description="the MLflow experiment, created if missing (null: the "
                                                     "study's name)")

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, uri):
        if uri is not None and ":" not in uri:  # a bare relative path would be resolved on each node
            raise ValueError(f"{uri!r} is not a URI: give file:/absolute/path for a local store, or a "
                             f"server's http(s):// address")
        return uri


class WandbTracker(Strict):
    """A Weights & Biases run per Tune trial (Tune's WandbLoggerCallback); needs `pip install 'raymem[wandb]'`."""
    project: str | None = Field(None, description="the W&B project (null: WANDB_PROJECT, else the study's name)")
    entity: str | None = Field(None, description="the W&B team or user (null: the account's default)")
    group: str | None = Field(None, description="the runs' group (null: the Tune experiment's name)")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="online needs WANDB_API_KEY (or `wandb login`); offline writes runs to `dir` "
                              "for a later `wandb sync`")
    dir: str | None = Field(None, description="folder the runs' files go under (null: each Tune trial's folder)")


class Trackers(Strict):
    """Experiment trackers the study's Tune trials log to (stage, task, seed and trial id as tags); off
    unless named. PreCog (Ray Data) and the search's candidates are not tracked."""
    mlflow: MlflowTracker | None = Field(None, description="MLflow (null: off; {} for the defaults)")
    wandb: WandbTracker | None = Field(None, description="Weights & Biases (null: off; {} for the defaults)")


class NeuronsConfig(Strict):
    """Neuron-level localisation over every layer's FFN units (Chang et al., 2024), with a
    planted ground truth. Technique defaults are MemPi's settings for GPT-2 (docs/neurons.md)."""
    enabled: bool = Field(False, description="score every FFN unit for the memorised examples, on planted "
                                             "control models (recall of the planted units) and the noisy model")
    techniques: list[str] = Field(
        default_factory=lambda: ["activations", "zero_out", "integrated_gradients", "slimming", "hard_concrete"],
        min_length=1, description="neuron techniques to run, by name (raymem/localise/registry.py)")
    noisy_model: bool = Field(True, description="also score the noisy fine-tuned model (deletion test on the "
                                                "memorisation fine-tuning put wherever it did)")
    planted_layers: list[list[int]] | None = Field(
        None, description="planted sets' layers, one or two layers each, 1-based (null: [L/2] and [L-1, L])")
    planted_fraction: float = Field(0.01, gt=0, le=0.05, description="planted units, as a share of all FFN "
                                                                       "units of the model")
    planted_seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1,
                                     description="one planted set of units per seed and planted layers")
    plant_lr: float = Field(0.01, gt=0, description="planting: Adam learning rate (MemPi's at a 1% ratio)")
    plant_epochs: int = Field(200, ge=1, description="planting: most epochs over the noisy set (MemPi: 200)")
    plant_stop_loss: float = Field(0.05, ge=0, description="planting: stop once the noisy set's mean loss is "
                                                           "below this (MemPi: 0.05)")
    scored_examples: int | None = Field(
        None, ge=1, description="memorised examples the techniques score: a sample of at most this many, seeded "
                                "by the model seed (null: all; planting and the deletion test use them all). "
                                "Zero-Out's cost is units x scored examples: set it for large tasks")
    batch_size: int = Field(16, ge=1, description="examples per forward (activations, zero-out, planting)")
    zero_out_chunk: int = Field(64, ge=1, description="zero-out: units scored per forward of the replicated batch")
    ig_steps: int = Field(20, ge=2, description="integrated gradients: steps from 0 to the units (MemPi: 20)")
    ig_batch_size: int = Field(8, ge=1, description="integrated gradients: examples per forward (x steps rows)")
    mask_batch_size: int = Field(32, ge=1, description="slimming, hard concrete: memorised examples per step")
    slim_lambda: float = Field(15000.0, gt=0, description="slimming: weight of the mean L1 penalty (MemPi: 15000)")
    slim_lr: float = Field(5e-3, gt=0, description="slimming: Adam learning rate (MemPi: 5e-3)")
    slim_epochs: int = Field(4000, ge=1, description="slimming: most steps (MemPi: 4000)")
    slim_stop_loss: float = Field(0.2, ge=0, description="slimming: stop once the penalty is below (MemPi: 0.2)")
    hc_lambda: float = Field(100.0, gt=0, description="hard concrete: weight of the L0 penalty (MemPi: 100)")
    hc_lr: float = Field(1e-3, gt=0, description="hard concrete: Adam learning rate (MemPi: 1e-3)")
    hc_epochs: int = Field(4000, ge=1, description="hard concrete: most steps (MemPi: 4000)")
    hc_stop_loss: float = Field(0.6, ge=0, description="hard concrete: stop once the penalty is below (MemPi: 0.6)")
    hc_mask_p: float = Field(0.5, gt=0, lt=1, description="hard concrete: initial mean gate (MemPi: 0.5)")
    hc_beta: float = Field(0.67, gt=0, description="hard concrete: temperature (MemPi: 0.67)")
    deletion_percents: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0, 2.0], min_length=1,
                                           description="deletion test: top p% of all units dropped, per p")
    deletion_random_draws: int = Field(3, ge=1, description="deletion test: random sets per size (the floor)")
    heldout: int = Field(200, ge=1, description="deletion test: clean held-out examples of eval_split")
    resources: Resources = Field(Resources(), description="per neuron trial")

    @field_validator("techniques")
    @classmethod
    def _registered(cls, techniques):
        from raymem.localise.registry import NEURON_TECHNIQUES

        return _registered(techniques, NEURON_TECHNIQUES, "neuron technique")

    @field_validator("planted_layers")
    @classmethod
    def _one_or_two(cls, sets):
        for layers in sets or []:
            if not 1 <= len(layers) <= 2 or len(set(layers)) != len(layers):
                raise ValueError(f"a planted set lies in one or two distinct layers, got {layers}")
        return _no_duplicates(sets or [], "planted layer set") if sets else sets

    @field_validator("deletion_percents")
    @classmethod
    def _percents(cls, percents):
        if any(not 0 < p <= 100 for p in percents):
            raise ValueError("deletion percents lie in (0, 100]")
        return _no_duplicates(percents, "deletion percent")

    @field_validator("planted_seeds")
    @classmethod
    def _distinct_planted_seeds(cls, seeds):
        return _no_duplicates(seeds, "planted seed")


class RayConfig(Strict):
    """Where the study runs."""
    address: str | None = Field(None, description="a Ray cluster to connect to (null: RAY_ADDRESS if set, "
                                                  "else a local Ray of the study's own)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (null: the machine's)")
    placement_timeout_s: float = Field(1800.0, gt=0, description="how long PreCog's actor pool may wait for "
                                       "its placement group (the nodes for it to start) before its trials "
                                       "fail; spot GPU nodes take minutes to join")


class Study(Strict):
    """A study file."""
    study: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the study's name; every row carries it")
    results: str = Field("results", description="results folder or s3:// URI")
    database: str | None = Field(None, description="DuckDB file (null: <results>/raymem.duckdb; required "
                                                   "for s3:// results)")
    models: list[str] = Field(default_factory=lambda: ["raymem-mini"], min_length=1,
                              description="registry names or checkpoint folders")
    tasks: list[TaskEntry] = Field(min_length=1, description="registry names, or user tasks (mappings: see "
                                                            "tasks[] below)")
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1,
                             description="model seeds: one fine-tuning trial per seed")
    data_seed: int = Field(1, description="fixes the noisy set, the same for every model seed")
    noise_ratio: float = Field(0.15, ge=0, lt=1, description="share of each class's training examples "
                                                            "relabelled to another class")
    train_min_annotator_confidence: float | None = Field(
        None, gt=0, le=1, description="keep only training examples whose annotators agreed at least this much "
                                      "(so the planted noise is the only label noise); null keeps all")
    subsample: dict[Split, int] = Field(default_factory=dict, description="split -> examples kept (optional)")
    subsample_strategy: Literal["stratified", "first"] = Field(
        "stratified", description="stratified: each class keeps its share, the first of each by example id; "
                                  "first: the first n by example id, whatever their classes")
    eval_split: Split = Field("test", description="the split fine-tuned models are evaluated on")
    bin_width: float = Field(0.1, gt=0, le=1, description="PreCog bin width of the end-of-study summary")
    precog: PrecogConfig = Field(PrecogConfig(), description="PreCog")
    search: SearchConfig = Field(SearchConfig(), description="training settings chosen on the validation split")
    finetune: FinetuneConfig = Field(FinetuneConfig(), description="fine-tuning")
    counterfactual: CounterfactualConfig = Field(CounterfactualConfig(), description="counterfactual memorisation")
    localise: LocaliseConfig = Field(LocaliseConfig(), description="localisation and the control setup")
    neurons: NeuronsConfig = Field(NeuronsConfig(), description="neuron-level localisation (docs/neurons.md)")
    ray: RayConfig = Field(RayConfig(), description="where the study runs")
    trackers: Trackers = Field(Trackers(), description="experiment trackers (MLflow, Weights & Biases)")

    @field_validator("subsample")
    @classmethod
    def _subsample(cls, sizes):
        if any(n < 1 for n in sizes.values()):
            raise ValueError("subsample sizes must be at least 1")
        return sizes

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, models):
        return _no_duplicates(models, "model")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        return _no_duplicates(seeds, "seed")

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, tasks):
        # by name: two user tasks of one name (whatever their files) would share every row
        _no_duplicates([t if isinstance(t, str) else t.name for t in tasks], "task")
        return tasks

    def task_names(self) -> list[str]:
        return [t if isinstance(t, str) else t.name for t in self.tasks]


def _location(loc: tuple) -> str:
    # pydantic reports union branches (tags) as extra path parts; keep the user's own keys.
    return ".".join(str(p) for p in loc if p not in ("registry task", "user task", "[key]"))


def load_study(path: str | Path, overrides: dict | None = None) -> Study:
    """Read and validate a study file, with `overrides` ({"search.enabled": True}) on top;
    raise ConfigError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: line {exc.problem_mark.line + 1}: {exc.problem}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    for key, value in (overrides or {}).items():  # dotted keys reach into sections: search.enabled
        *sections, last = key.split(".")
        where = raw
        for section in sections:
            where = where.setdefault(section, {})
            if not isinstance(where, dict):
                raise ConfigError(f"{path}: {key}: {section} is not a section of settings")
        where[last] = value
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
            model = section_model(model.model_fields[part].annotation) or model
    return list(getattr(model, "model_fields", {}))


def section_model(annotation) -> type[BaseModel] | None:
    """The section a field holds: its model, also where the section may be null (a tracker)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _suggest(key: str, loc: tuple) -> str:
    return f" {key!r}{did_you_mean(key, _fields_at(loc))}"
