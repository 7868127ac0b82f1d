"""Ingest: building the DuckDB database from a study's shards, against shard count and rows.

Three ways over the same shards of a predictions-like table, each in a fresh process (its
peak RSS is its own):

    raymem      raymem.store.ingest: DuckDB reads the study's own shard list (read_parquet)
    in-memory   every shard read into pyarrow and concatenated, then one CREATE TABLE: what
                ingest did before (and still does for object storage)
    plain       one CREATE TABLE AS SELECT * FROM read_parquet('<dir>/*.parquet')

Prints a table and writes benchmarks/out/ingest.json.
Usage: .venv/bin/python benchmarks/ingest.py [--sizes 100:200000 1000:2000000 ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "ingest.json"
WAYS = ("raymem", "in-memory", "plain")


def make_shards(root: Path, shards: int, rows: int) -> None:
    import numpy as np
    import polars as pl

    from raymem.store import Store

    store, rng, per = Store(str(root)), np.random.default_rng(0), rows // shards
    for i in range(shards):
        store.write_rows("predictions", "finetune", f"finetune-{i:06d}", pl.DataFrame({
            "example_id": [f"e{j}" for j in range(per)], "split": "train", "checkpoint": "final",
            "epoch": 20, "label": rng.integers(0, 3, per), "predicted": rng.integers(0, 3, per),
            "correct": rng.random(per) < 0.7, "p_label": rng.random(per), "task": "t", "model": "m",
            "seed": 1, "variant": "clean"}), "bench")


def run_one(way: str, root: str) -> dict:
    """In this (fresh) process: build the database one way; wall seconds and peak RSS."""
    import duckdb

    from raymem.store import Store, ingest

    store, db = Store(root), Path(root) / f"{way}.duckdb"
    start = time.perf_counter()
    if way == "raymem":
        ingest(store, db)
    elif way == "in-memory":
        con = duckdb.connect(str(db))
        con.register("shards", store.read_table("predictions"))
        con.execute("CREATE TABLE predictions AS SELECT * FROM shards").fetchall()
        con.close()
    else:
        con = duckdb.connect(str(db))
        con.execute(f"CREATE TABLE predictions AS SELECT * FROM read_parquet('{root}/predictions/*/*.parquet')")
        con.close()
    wall = time.perf_counter() - start
    db.unlink()
    return {"seconds": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["100:200000", "1000:1000000", "4000:4000000"],
                        help="SHARDS:ROWS pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # WAY ROOT: a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    results = []
    for size in args.sizes:
        shards, rows = (int(x) for x in size.split(":"))
        with tempfile.TemporaryDirectory() as root:
            make_shards(Path(root), shards, rows)
            for way in WAYS:
                runs = [json.loads(subprocess.run([sys.executable, __file__, "--one", way, root], check=True,
                                                  capture_output=True, text=True).stdout)
                        for _ in range(args.repeats)]
                results.append({"shards": shards, "rows": rows, "way": way,
                                "seconds": statistics.median(r["seconds"] for r in runs),
                                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs)})
    print(f"\n{'shards':>7} {'rows':>9} {'way':<10} {'median s':>9} {'ms/shard':>9} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['shards']:>7} {r['rows']:>9} {r['way']:<10} {r['seconds']:>9.2f} "
              f"{1000 * r['seconds'] / r['shards']:>9.2f} {r['peak_rss_mib']:>13.0f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"repeats": args.repeats, "results": results}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
