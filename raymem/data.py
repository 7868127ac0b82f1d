"""Examples of a study, and the Ray Data pipeline that scores them.

`prepare_examples` turns a loaded task into the `examples` table of one (task, model):
the study's subsample, the perturbed training labels, planted counts and confounders.
`precog_rows` streams those examples through an actor pool of PrecogScorers, in the
resources `reserve_pool` holds for it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
import pyarrow as pa
import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raymem.config import ActorPool, PrecogConfig, Study
from raymem.errors import ConfigError
from raymem.measures.noise import perturb_labels
from raymem.measures.precog import PrecogScorer, PrecogSettings
from raymem.models import ModelSpec, load_tokenizer, model_inputs, planted_counts
from raymem.tasks import TaskSpec


def subsample(split: pl.DataFrame, n: int | None, strategy: str = "first") -> pl.DataFrame:
    """n examples, deterministic by example id (a fixed pseudo-random order): the first n
    (`first`), or the first of each class in numbers proportional to the class's share of
    the split (`stratified`; largest remainders round, so the counts add up to n)."""
    split = split.sort("example_id")
    if n is None or n >= split.height:
        return split
    if strategy == "first":
        return split.head(n)
    counts = split["label"].value_counts(name="n").sort("label")
    quota = counts["n"].to_numpy() * n / split.height
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[:n - take.sum()]:
        take[i] += 1
    keep = dict(zip(counts["label"].to_list(), take.tolist()))
    return (split.with_columns(pl.int_range(pl.len()).over("label").alias("_rank"))
            .filter(pl.col("_rank") < pl.col("label").replace_strict(keep, return_dtype=pl.Int64))
            .drop("_rank"))


def agreed_examples(split: pl.DataFrame, min_confidence: float, task: str) -> pl.DataFrame:
    """The examples whose annotators agreed at least `min_confidence` (unknown agreement: dropped)."""
    if split["annotator_confidence"].is_null().all():
        raise ConfigError(f"train_min_annotator_confidence: task {task} does not record how its "
                          f"annotators agreed; remove the setting for this study")
    agreed = split.filter(pl.col("annotator_confidence") >= min_confidence)
    if agreed.is_empty():
        raise ConfigError(f"train_min_annotator_confidence: no training example of task {task} "
                          f"has annotator_confidence >= {min_confidence}")
    return agreed


def word_rarity(texts: pl.Series) -> pl.Series:
    """Mean over an example's words of -log(in-task relative frequency of the word)."""
    words = texts.str.to_lowercase().str.extract_all(r"\w+")
    counts = words.explode().drop_nulls().value_counts(name="n")
    total = counts["n"].sum()
    info = dict(zip(counts[counts.columns[0]].to_list(),
                    (-np.log(counts["n"].to_numpy() / total)).tolist()))
    return pl.Series([float(np.mean([info[w] for w in ws])) if ws is not None and len(ws) else None
                      for ws in words.to_list()], dtype=pl.Float64)


def prepare_examples(study: Study, spec: TaskSpec, splits: dict[str, pl.DataFrame],
                     model: ModelSpec) -> pl.DataFrame:
    parts = []
    for split, df in splits.items():
        if split == "train" and study.train_min_annotator_confidence is not None:
            df = agreed_examples(df, study.train_min_annotator_confidence, spec.name)
        df = subsample(df, study.subsample.get(split), study.subsample_strategy)
        label = df["label"].to_numpy()
        if split == "train":
            label = perturb_labels(df["example_id"].to_list(), label, len(spec.label_names),
                                   study.noise_ratio, study.data_seed)
        parts.append(df.with_columns(pl.lit(split).alias("split"),
                                     pl.col("label").alias("original_label"),
                                     pl.Series("label", label)))
    examples = pl.concat(parts)
    tokenizer = load_tokenizer(model)
    enc = tokenizer(*model_inputs(tokenizer, examples["text"].to_list(), examples["text_pair"].to_list()),
                    add_special_tokens=False)
    planted = planted_counts(model)
    return (examples
            .with_columns(pl.lit(spec.name).alias("task"), pl.lit(model.name).alias("model"),
                          (pl.col("label") != pl.col("original_label")).alias("noisy"),
                          pl.Series("n_tokens", [len(x) for x in enc["input_ids"]]),
                          word_rarity(examples["text"]).alias("rarity"))
            .join(planted, on="example_id", how="left")
            .with_columns(pl.col("planted_count").fill_null(0))
            .select("task", "model", "split", "example_id", "text", "text_pair", "label",
                    "original_label", "noisy", "planted_count", "n_tokens", "rarity",
                    "annotator_confidence"))


def reserve_pool(pool: ActorPool) -> PlacementGroup:
    """A placement group of one bundle per actor of the pool at its largest.

    A Ray Data actor pool reserves nothing of its own: beside a Tune sweep, Tune asks for its
    next trial the moment one ends and wins every freed CPU, so the pool may wait for the
    sweep's end. Asked for before the sweep, this group holds the pool's CPUs and GPUs from
    the start; remove it when the pool is done, and the sweep gets them back."""
    bundle = {"CPU": pool.cpus, **({"GPU": pool.gpus} if pool.gpus else {})}
    return placement_group([bundle] * pool.max_size, strategy="PACK", name="raymem-precog")


def precog_rows(examples: pl.DataFrame, model: ModelSpec, cfg: PrecogConfig,
                info: dict | None = None, reserved: PlacementGroup | None = None,
                restarts: bool = True) -> pl.DataFrame:
    """Score every example through a Ray Data actor pool; one row per (example, k).
    `info` gets the device and precision the actors ran on; `reserved` (`reserve_pool`) is
    where the pool's actors run.

    `restarts`: Ray Data restarts an actor whose node was lost (its default). Ray Data
    passes every actor its DataContext and MapTransformer through the object store, and
    Ray's core worker logs an error for each such actor that may restart (restarts from
    arguments in the object store can fail: ray-project/ray#53727), whatever the size of
    fn_constructor_kwargs. On a local Ray no node can be lost, so the study asks for none
    (and no such line); on a cluster a lost node is real and restarts stay on."""
    settings = PrecogSettings(ks=tuple(cfg.k), unit=cfg.unit, masking=cfg.masking, draws=cfg.draws,
                              copies_per_batch=cfg.copies_per_batch, max_length=cfg.max_length)
    table = examples.select("example_id", "text", "text_pair").to_arrow()
    # Several blocks, so that every actor of the pool gets work.
    n_blocks = max(1, min(4 * cfg.actors.max_size, math.ceil(table.num_rows / cfg.examples_per_batch)))
    step = math.ceil(table.num_rows / n_blocks)
    # from_blocks, not from_arrow: from_arrow reads its blocks' metadata in Ray tasks outside
    # any placement group, which wait for a CPU as long as the sweep holds them all
    ds = ray.data.from_blocks([table.slice(i, step) for i in range(0, table.num_rows, step)])
    if reserved is not None:
        # This dataset's own context: every task and actor it starts goes into the group,
        # and Ray Data budgets by the group's bundles, not by the cluster's free resources
        # (which the group itself has taken). Ray 2.60 marks these fields deprecated with no
        # replacement yet (ray-project/ray#64090 adds one to map_batches).
        strategy = PlacementGroupSchedulingStrategy(reserved)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ds.context.scheduling_strategy = strategy
            ds.context.scheduling_strategy_large_args = strategy
    with warnings.catch_warnings():
        # max_restarts has no named parameter yet: Ray 2.60 calls the remote arguments
        # deprecated while they are the only way to set it
        warnings.simplefilter("ignore", DeprecationWarning)
        scored = ds.map_batches(
            PrecogScorer,
            fn_constructor_kwargs={"model": model, "settings": settings,
                                   "num_threads": max(1, int(cfg.actors.cpus)),
                                   "device": cfg.actors.device, "precision": cfg.actors.precision},
            batch_size=cfg.examples_per_batch, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=cfg.actors.min_size, max_size=cfg.actors.max_size),
            num_cpus=cfg.actors.cpus, num_gpus=cfg.actors.gpus, **({} if restarts else {"max_restarts": 0}))
    wide = pl.from_arrow(pa.concat_tables(list(scored.iter_batches(batch_format="pyarrow", batch_size=None))))
    if info is not None:
        info["device"] = ", ".join(sorted(wide["device"].unique()))
        info["precision"] = ", ".join(sorted(wide["precision"].unique()))
    return (wide.unpivot(index=["example_id", "pll", "n_units"],
                         on=[f"precog_at_{k}" for k in cfg.k], variable_name="k", value_name="score")
            .with_columns(pl.col("k").str.strip_prefix("precog_at_").cast(pl.Int64),
                          pl.lit(model.name).alias("model"), pl.lit(cfg.unit).alias("unit"),
                          pl.lit(cfg.masking).alias("masking"))
            .select("example_id", "model", "k", "score", "pll", "n_units", "unit", "masking"))
