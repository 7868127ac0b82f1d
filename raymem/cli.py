"""`raymem study|status|plan|query|chart|report|schema|pretrain|ingest`: the command line.

Exit codes: 0 success, 1 some trials failed (the rest finished and were ingested),
2 bad input (nothing was run or written), 3 the results store (or the disk under the
database) is full: the study stopped, what finished is kept and the same command resumes
once there is room, 130 stopped by Ctrl-C or SIGTERM (what finished is kept; the same
command resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import polars as pl

from raymem.errors import ConfigError, StoreFull, is_disk_full

HEADLINES = [  # (query, filter, title) printed at the end of a study, where the study has the tables
    ("precog_accuracy_by_bin", pl.col("task") == "ALL", "Accuracy by PreCog bin (all tasks pooled)"),
    ("precog_correlation", None, "PreCog vs correctness"),
    ("precog_regression", pl.col("term") == "precog",
     "PreCog's effect on correctness beyond length and rarity (logistic, per SD)"),
    # only where the model had examples planted in its pre-training corpus
    ("precog_planted", (pl.col("k") == pl.col("k").min()) & (pl.col("planted_count").max() > 0),
     "PreCog by times planted in pre-training"),
    ("memorisation_fit", pl.col("variant") == "noisy", "Fit of the noisy-label models (train split)"),
    ("counterfactual_auroc", pl.col("annotators") == "all", "Counterfactual memorisation: noisy vs clean"),
    ("mcog_by_task", None, "Memorisation centre of gravity (M-CoG) per task and technique"),
    ("control_accuracy", None, "Control setup: does each technique find the planted layers?"),
    ("neuron_recall", None, "Neurons: recall@k of the planted units per technique"),
    ("intervals", pl.col("low").is_not_null(), "95% bootstrap intervals"),
]


def headline_table(title: str, df: pl.DataFrame, fold: bool = True) -> str:
    """A table that reads in an 80-column terminal: a column with one value in every row
    goes into the title (`fold`), floats get 3 decimals, and nothing wraps mid-word."""
    fixed = [c for c in df.columns if fold and df.height > 1 and df[c].n_unique() == 1]
    if fixed:
        title += " [" + ", ".join(f"{c} {df[c][0]}" for c in fixed) + "]"
        df = df.drop(fixed)
    with pl.Config(tbl_rows=40, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   tbl_formatting="ASCII_MARKDOWN", fmt_str_lengths=40, float_precision=3,
                   tbl_width_chars=1000):
        return f"{textwrap.fill(title, 80)}\n{df}"


def _print_table(title: str, df: pl.DataFrame, fold: bool = True) -> None:
    print(f"\n{headline_table(title, df, fold)}", flush=True)


def headline_frames(db_path: Path, bin_width: float):
    """Yield (query name, title, rows) of each headline the database has the tables for
    (the end of a study and `raymem report` show the same)."""
    from raymem.queries import load_query, query

    for name, keep, title in HEADLINES:
        params = {"bin_width": bin_width} if "bin_width" in load_query(name)[1] else {}
        try:
            df = query(name, db_path, **params)
        except ConfigError:  # the study did not run the stage this query reads
            continue
        df = df.filter(keep) if keep is not None else df
        if df.height:
            yield name, title, df


def check_location(row: dict) -> str:
    """Where a check's row applies: task, model and seed, as far as it names them."""
    return " ".join(str(row[k]) for k in ("task", "model") if row[k]) + (
        f" seed {row['seed']}" if row["seed"] is not None else "")


def _print_headlines(db_path: Path, bin_width: float) -> None:
    for _, title, df in headline_frames(db_path, bin_width):
        # point estimates in the terminal; their intervals (*_low, *_high) are in the report
        _print_table(title, df.drop([c for c in df.columns if c.endswith(("_low", "_high"))]))
    _print_checks(db_path)


def _print_checks(db_path: Path) -> None:
    """The checks' verdict, and every warning with what to change."""
    from raymem.queries import query

    try:
        checks = query("checks", db_path)
    except ConfigError:
        return
    warnings = checks.filter(pl.col("status") == "warn")
    print(f"\nChecks: {checks.height - warnings.height} passed, {warnings.height} warning(s)"
          f"{' (raymem query checks)' if checks.height else ''}")
    for row in warnings.iter_rows(named=True):
        print(f"  WARN {row['check_name']} [{check_location(row)}]: {row['message']}")


def _set_value(key: str, value: str):
    """A --set value read as the study file is: YAML, no key given twice."""
    import yaml

    from raymem.config import DuplicateKeyError, load_yaml

    try:
        return load_yaml(value)
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set {key}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: not valid YAML: {' '.join(str(exc).split())}") from exc


def _overrides(args) -> dict:
    """--results and every --set KEY=VALUE (the value read as YAML: true, 0.001, [1, 2])."""
    overrides = {"results": args.results} if args.results else {}
    for setting in args.set:
        key, equals, value = setting.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"--set {setting}: expected KEY=VALUE, e.g. --set search.enabled=true")
        overrides[key.strip()] = _set_value(key.strip(), value)
    return overrides


def cmd_study(args) -> int:
    from raymem.config import load_study

    start = time.time()
    study = load_study(args.file, _overrides(args))
    from raymem.study import make_plan

    plan = make_plan(study)
    print(f"[plan] study {study.study}: {plan.n_trials()} trials, results in {plan.store.uri}", flush=True)
    if plan.up_to_date():  # answered from the store: no Ray, no ingest, no charts
        print(f"[study] all {plan.n_trials()} trials are done and {plan.db_path} holds them: nothing to run")
        _print_headlines(plan.db_path, study.bin_width)
        return 0
    try:
        return _run_study(args, study, plan, start)
    except OSError as exc:  # the store, the database or the charts: one message, no traceback
        if not is_disk_full(exc):
            raise
        from raymem.sweep import storage_full

        raise storage_full(plan.store, exc) from exc


def _run_study(args, study, plan, start: float) -> int:
    from raymem.charts import available_charts, save_chart
    from raymem.report import write_report
    from raymem.study import run_plan

    try:
        failed = run_plan(plan)
    except KeyboardInterrupt as stop:  # raymem's StudyInterrupted, or Ray's own from a wait
        done = len(plan.store.done_ids() & {t.trial_id for t in plan.trials})
        resume = " ".join(["raymem study", args.file, *(["--results", args.results] if args.results else []),
                           *(f"--set {s}" for s in args.set)])
        from raymem.sweep import StudyInterrupted

        reason = str(stop) or StudyInterrupted.received or "SIGINT"
        print(f"\nstudy {study.study} stopped ({reason}): {done} of {plan.n_trials()} trials are "
              f"finished and kept; nothing half-written is used.\nResume with the same command:\n  {resume}",
              file=sys.stderr, flush=True)
        return 130
    charts_dir = plan.db_path.parent / "charts"
    for name in available_charts(plan.db_path):
        save_chart(name, plan.db_path, charts_dir)
        print(f"[charts] {charts_dir / name}.png and .html")
    report = write_report(plan.db_path, charts_dir, study.study, study.bin_width)
    print(f"[report] {report}")
    _print_headlines(plan.db_path, study.bin_width)
    print(f"\nstudy {study.study} finished in {time.time() - start:.0f}s")
    print(f"database: {plan.db_path}   (raymem query --list; duckdb {plan.db_path})")
    print(f"charts:   {charts_dir}/   report: {report}")
    if failed:
        print(f"\n{len(failed)} trial(s) failed; see the runs table:", file=sys.stderr)
        for t in failed:
            print(f"  {t.trial_id} {t.label()}", file=sys.stderr)
        return 1
    return 0


def cmd_query(args) -> int:
    from raymem.queries import list_queries, query, write_result

    if args.list or not args.name:
        for name, description in list_queries():
            print(f"{name:28s} {description}")
        return 0
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r}: expected name=value")
        params[key] = value  # typed and range-checked against the query's header
    result = query(args.name, args.db, **params)
    if args.format == "table" and args.out is None:
        _print_table(args.name, result)
        return 0
    text = write_result(result, "csv" if args.format == "table" else args.format, args.out)
    if text is not None:
        sys.stdout.write(text)
    return 0


def cmd_chart(args) -> int:
    from raymem.charts import save_chart

    db = Path(args.db)
    for path in save_chart(args.name, db, args.out or db.parent / "charts"):
        print(path)
    return 0


def cmd_report(args) -> int:
    from raymem.report import write_report

    db, title = Path(args.db), args.title
    if args.study:  # the study's own database, and its name as the heading
        from raymem.config import load_study
        from raymem.store import Store, database_path

        study = load_study(args.study)
        db, title = database_path(Store(study.results), study.database), title or study.study
    if not db.is_file():
        raise ConfigError(f"no results database at {db}; run the study first (raymem study FILE)")
    print(write_report(db, args.out or db.parent / "charts", title))
    return 0


def cmd_pretrain(args) -> int:
    import torch

    from raymem.pretrain import PretrainSettings, pretrain

    torch.set_num_threads(args.threads)
    fields = ("vocab_size", "layers", "hidden", "epochs", "max_texts", "planted_per_count")
    settings = PretrainSettings(**{f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    pretrain(args.out, settings)
    return 0


def cmd_plan(args) -> int:
    """What the study will run and cost; reads neither its results store nor the hub."""
    from raymem.config import load_study
    from raymem.errors import did_you_mean
    from raymem.estimate import GPU_PEAK_TFLOPS, estimate, report

    if args.gpu not in GPU_PEAK_TFLOPS:
        raise ConfigError(f"--gpu: unknown GPU {args.gpu!r}{did_you_mean(args.gpu, GPU_PEAK_TFLOPS)}; "
                          f"known: {', '.join(GPU_PEAK_TFLOPS)}")
    if not 0 < args.efficiency <= 1:
        raise ConfigError(f"--efficiency: expected a share of the peak in (0, 1], got {args.efficiency}")
    plan = estimate(load_study(args.file, _overrides(args)), args.gpu, args.efficiency)
    print(report(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def cmd_status(args) -> int:
    """Per stage: trials done, to redo (a marker of another results schema, or its shards
    missing or damaged), failed, started but unfinished, pending; from the store alone."""
    from raymem.config import load_study
    from raymem.store import ATTEMPTS, redo_lines
    from raymem.study import make_plan

    study = load_study(args.file, _overrides(args))
    plan = make_plan(study, log=lambda *_: None)
    store, ids = plan.store, {t.trial_id for t in plan.trials}
    done, why = store.check_markers()
    why = {t: reason for t, reason in why.items() if t in ids}
    done, redo = done & ids, set(why)
    started = set(store.files(ATTEMPTS)) & ids  # one listing, not one request per trial
    runs = store.read_table("runs", ids)
    runs = pl.from_arrow(runs) if runs is not None else pl.DataFrame(
        schema={"trial_id": pl.Utf8, "status": pl.Utf8, "wall_seconds": pl.Float64})
    failed = set(runs.filter(pl.col("status") == "failed")["trial_id"]) - done - redo
    rows = []
    for stage in dict.fromkeys(t.stage for t in plan.trials):
        mine = {t.trial_id for t in plan.trials if t.stage == stage}
        walls = runs.filter(pl.col("trial_id").is_in(mine & done))["wall_seconds"]
        rows.append({"stage": stage, "trials": len(mine), "done": len(mine & done), "redo": len(mine & redo),
                     "failed": len(mine & failed), "started": len((mine & started) - done - redo - failed),
                     "pending": len(mine - done - redo - failed - started),
                     "median_seconds": round(walls.median(), 1) if len(walls) else None})
    table = pl.DataFrame(rows)
    _print_table(f"study {study.study}: {len(done)} of {len(ids)} trials done ({store.uri})", table, fold=False)
    for line in redo_lines(why):
        print(f"[store] {line}")
    return 0


def cmd_schema(args) -> int:
    from raymem.schema import reference

    print(reference(), end="")
    return 0


def cmd_ingest(args) -> int:
    from raymem.store import Store, database_path, ingest

    store = Store(args.results)
    counts = ingest(store, database_path(store, args.db))
    for table, n in counts.items():
        print(f"{table:16s} {n}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raymem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("study", help="run a study file on Ray (local, or the cluster in RAY_ADDRESS)")
    p.add_argument("file")
    p.add_argument("--results", help="override the study's results location (path or s3:// URI)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one study key, dotted for a section's (e.g. search.enabled=true)")
    p.set_defaults(fn=cmd_study)
    p = sub.add_parser("query", help="run queries/NAME.sql against the results database")
    p.add_argument("name", nargs="?")
    p.add_argument("--list", action="store_true", help="list the queries")
    p.add_argument("--db", default="results/raymem.duckdb")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table",
                   help="table (printed), or csv / json to standard output or --out, parquet to --out")
    p.add_argument("--out", help="write the result to this file (table: as csv)")
    p.set_defaults(fn=cmd_query)
    p = sub.add_parser("chart", help="write results/charts/NAME.png and .html")
    p.add_argument("name")
    p.add_argument("--db", default="results/raymem.duckdb")
    p.add_argument("--out")
    p.set_defaults(fn=cmd_chart)
    p = sub.add_parser("report", help="write one self-contained HTML report of a results database "
                                      "(and its charts as PNGs) to results/charts/report.html")
    p.add_argument("--db", default="results/raymem.duckdb")
    p.add_argument("--study", metavar="STUDY.yaml", help="the study's own database (instead of --db)")
    p.add_argument("--out", help="folder for report.html and the PNGs (default: charts/ beside the database)")
    p.add_argument("--title", default="", help="the report's heading (default: the results folder's name)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("pretrain", help="pre-train raymem's small masked-LM")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    for name in ("vocab_size", "layers", "hidden", "epochs", "max_texts", "planted_per_count"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    p.set_defaults(fn=cmd_pretrain)
    p = sub.add_parser("plan", help="trials per stage, examples, compute and storage, before running (offline)")
    p.add_argument("file")
    p.add_argument("--results", help="the results location, if not the study file's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for `raymem study`")
    p.add_argument("--gpu", default="A10G", help="GPU type for GPU-hours: T4, A10G, L4, A100, H100, H200")
    p.add_argument("--efficiency", type=float, default=0.3, help="share of the GPU's dense bf16 peak reached")
    p.add_argument("--json", help="also write the plan to this file")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("status", help="per stage: trials done, failed, started, pending (reads the store only)")
    p.add_argument("file")
    p.add_argument("--results", help="the results location, if not the study file's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for `raymem study`")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("schema", help="every key of a study file: type, default, meaning (Markdown)")
    p.set_defaults(fn=cmd_schema)
    p = sub.add_parser("ingest", help="rebuild the DuckDB database from the Parquet shards")
    p.add_argument("--results", default="results")
    p.add_argument("--db")
    p.set_defaults(fn=cmd_ingest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"raymem: error: {exc}", file=sys.stderr)
        return 2
    except StoreFull as exc:
        print(f"raymem: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
