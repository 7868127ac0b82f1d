"""The store can be trusted: folder names never reach SQL, a marker counts only with its
shards whole and of this results schema, shards of two schemas are never cast together,
and local writes reach the disk before they are published."""

import json
import os

import duckdb
import polars as pl
import pytest

from raymem import store as store_module
from raymem.errors import ConfigError
from raymem.store import MARKERS, RESULTS_SCHEMA, Store, ingest, write_derived


def _rows(n, offset=0):
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(offset, offset + n)],
                         "score": [i / 10 for i in range(offset, offset + n)]})


def _finished(store, trial_id, table="precog", n=3):
    """A trial as the sweep leaves it: its shards, then a marker naming them."""
    shards = store.write_rows(table, "precog", trial_id, _rows(n), study="s")
    shards |= store.write_rows("runs", "precog", trial_id, pl.DataFrame({"status": ["ok"]}), study="s")
    store.mark_done(trial_id, {"stage": "precog"}, shards)
    return shards


# -- 1: folder names never reach SQL --------------------------------------------------------
def test_a_folder_named_to_close_the_quote_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the injected COPY would write its file
    root = tmp_path / "results"
    store = Store(str(root))
    _finished(store, "precog-a")
    evil = "x\" AS SELECT 1; COPY (SELECT 1) TO 'pwned.csv'; SELECT ?; --"
    store.write_rows("precog", "precog", "precog-b", _rows(2), study="s")
    (root / evil / "precog").mkdir(parents=True)
    (root / "precog" / "precog" / "precog-b.parquet").rename(root / evil / "precog" / "b.parquet")
    db = tmp_path / "db" / "raymem.duckdb"
    with pytest.raises(ConfigError, match=r"results: .*COPY .* is not a table raymem writes") as error:
        ingest(store, db)
    assert repr(evil) in str(error.value)  # named
    assert not (tmp_path / "pwned.csv").exists()  # the COPY never ran
    assert not (tmp_path / "db").exists()  # nothing written: no database, no temp file


def test_an_unknown_folder_is_named_and_nothing_is_written(tmp_path):
    store = Store(str(tmp_path))
    _finished(store, "precog-a")
    (tmp_path / "notes").mkdir()
    with pytest.raises(ConfigError, match=r"'notes' under .* is not a table raymem writes"):
        ingest(store, tmp_path / "raymem.duckdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_done", "notes", "precog", "runs"]


def test_derived_tables_are_only_raymems_own(tmp_path):
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    try:
        with pytest.raises(ValueError, match="derived"):
            write_derived(con, 'checks"; DROP TABLE x; --', pl.DataFrame({"a": [1]}))
        assert write_derived(con, "checks", pl.DataFrame({"a": [1]})) == 1
    finally:
        con.close()


# -- 5: markers checked against their shards ---------------------------------------------------
def test_a_marker_records_its_shards_and_schema(tmp_path):
    store = Store(str(tmp_path))
    shards = _finished(store, "precog-a")
    marker = json.loads((tmp_path / MARKERS / "precog-a.json").read_text())
    assert marker["results_schema"] == RESULTS_SCHEMA
    assert marker["shards"] == shards == {
        "precog/precog/precog-a.parquet": (tmp_path / "precog/precog/precog-a.parquet").stat().st_size,
        "runs/precog/precog-a.parquet": (tmp_path / "runs/precog/precog-a.parquet").stat().st_size}
    assert store.done_ids() == {"precog-a"} and store.is_done("precog-a")


def test_a_truncated_shard_is_redone_and_said_once(tmp_path, capsys):
    store = Store(str(tmp_path))
    _finished(store, "precog-a")
    _finished(store, "precog-b")
    shard = tmp_path / "precog" / "precog" / "precog-a.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])  # a write cut short
    assert store.done_ids() == {"precog-b"} and not store.is_done("precog-a")
    assert store.done_ids() == {"precog-b"}
    out = capsys.readouterr().out
    assert out.count("[store]") == 1  # said once, however often it is asked
    assert "1 trial miss a shard or hold a damaged one (e.g. precog/precog/precog-a.parquet); it is redone" in out


def test_a_zero_length_shard_of_the_recorded_size_is_caught_by_its_footer(tmp_path):
    # a power cut after the rename: the name and size are there, the bytes are not
    store = Store(str(tmp_path))
    _finished(store, "precog-a")
    shard = tmp_path / "precog" / "precog" / "precog-a.parquet"
    shard.write_bytes(b"\0" * shard.stat().st_size)
    assert Store(str(tmp_path)).done_ids() == set()


def test_a_missing_shard_is_redone(tmp_path):
    store = Store(str(tmp_path))
    _finished(store, "precog-a")
    (tmp_path / "runs" / "precog" / "precog-a.parquet").unlink()
    assert Store(str(tmp_path)).done_ids() == set()


def test_a_truncated_marker_is_redone(tmp_path, capsys):
    store = Store(str(tmp_path))
    _finished(store, "precog-a")
    marker = tmp_path / MARKERS / "precog-a.json"
    marker.write_bytes(marker.read_bytes()[:7])
    assert store.done_ids() == set()
    assert "1 trial has an unreadable completion marker (e.g. _done/precog-a.json); it is redone" in \
        capsys.readouterr().out


def test_markers_of_another_results_schema_are_redone(tmp_path, capsys):
    store = Store(str(tmp_path))
    for name in ("precog-a", "precog-b"):
        _finished(store, name)
        (tmp_path / MARKERS / f"{name}.json").write_text(json.dumps({"stage": "precog"}))  # as before
    _finished(store, "precog-c")
    assert store.done_ids() == {"precog-c"}
    assert (f"[store] 2 trials were written by results schema 1 (this is {RESULTS_SCHEMA}); they are redone"
            in capsys.readouterr().out)


def test_a_valid_marker_is_read_once_per_store(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    for i in range(3):
        _finished(store, f"precog-{i}")
    reads = []
    read = Store._read_marker
    monkeypatch.setattr(Store, "_read_marker", lambda self, info: reads.append(info.path) or read(self, info))
    assert store.done_ids() == store.done_ids() == {"precog-0", "precog-1", "precog-2"}
    assert len(reads) == 3  # the second call lists the markers and reads none
    _finished(store, "precog-3")  # a new one is read, the others not again
    assert len(store.done_ids()) == 4 and len(reads) == 4


def test_ingest_and_read_table_leave_a_damaged_shard_out(tmp_path, capsys):
    store = Store(str(tmp_path))
    _finished(store, "precog-a")
    _finished(store, "precog-b", n=5)
    (tmp_path / "precog" / "precog" / "precog-a.parquet").write_bytes(b"PAR1 cut")
    counts = ingest(store, tmp_path / "raymem.duckdb")
    assert counts["precog"] == 5 and counts["runs"] == 2
    assert "[ingest] precog: left out 1 damaged shard(s), e.g. precog/precog/precog-a.parquet" in \
        capsys.readouterr().out
    assert store.read_table("precog").num_rows == 5


# -- 2: shards of two schemas are never cast together -------------------------------------------
def test_ingest_refuses_a_column_of_two_types_naming_table_column_and_types(tmp_path):
    store = Store(str(tmp_path))
    store.write_rows("precog", "precog", "old", pl.DataFrame({"score": ["0.5"]}), study="s")
    store.write_rows("precog", "precog", "new", pl.DataFrame({"score": [0.5]}), study="s")
    with pytest.raises(ConfigError, match=r"ingest: table precog: column 'score' is (double|large_string) in "
                                          r"precog/precog/(new|old)\.parquet but (double|large_string) in "):
        ingest(store, tmp_path / "raymem.duckdb")
    assert not (tmp_path / "raymem.duckdb").exists()


def test_a_column_missing_or_all_null_in_some_shards_is_no_conflict(tmp_path):
    store = Store(str(tmp_path))
    store.write_rows("runs", "precog", "a", pl.DataFrame({"status": ["ok"], "error": [None]}), study="s")
    store.write_rows("runs", "finetune", "b", pl.DataFrame({"status": ["failed"], "error": ["x"],
                                                            "seed": [3]}), study="s")
    assert ingest(store, tmp_path / "raymem.duckdb")["runs"] == 2


# -- 5: local writes reach the disk before they are published -------------------------------------
def test_shard_marker_and_checkpoint_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    store = Store(str(tmp_path / "results"))
    shards = store.write_rows("precog", "precog", "t", _rows(2), study="s")
    # the temp file before its rename, then the folder that holds the new name
    assert ".tmp-" in synced[0] and synced[1] == str(tmp_path / "results" / "precog" / "precog")
    synced.clear()
    store.mark_done("t", {}, shards)
    assert ".tmp-" in synced[0] and synced[1] == str(tmp_path / "results" / MARKERS)
    synced.clear()
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"x" * 10)
    store.put_dir(src, "checkpoints", "t", "final")
    target = tmp_path / "results" / "checkpoints" / "t" / "final"
    assert {str(target / "model.safetensors"), str(target)} <= set(synced)
    synced.clear()
    store.put_bytes(b"state", "checkpoints", "t", "progress.pt")
    assert ".tmp-" in synced[0] and synced[1] == str(tmp_path / "results" / "checkpoints" / "t")


def test_status_shows_trials_to_redo_and_survives_a_damaged_shard(tmp_path, capsys):
    import yaml

    from raymem.cli import main
    from raymem.config import load_study
    from raymem.study import make_plan

    data = os.path.join(os.path.dirname(__file__), "data", "user_task")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "study": "redo", "results": str(tmp_path / "results"), "models": ["raymem-mini"], "seeds": [1, 2],
        "tasks": [{"name": "reviews", "text_fields": ["review"], "label_field": "verdict",
                   "label_names": ["bad", "good"],
                   "files": {s: f"{data}/{s}.csv" for s in ("train", "validation", "test")}}],
        "eval_split": "test", "precog": {"enabled": False}, "finetune": {"epochs": 1}}))
    plan = make_plan(load_study(path), log=lambda *_: None)
    store = plan.store
    examples, *finetune = plan.trials
    store.mark_done(examples.trial_id, {}, store.write_rows("examples", "examples", examples.trial_id,
                                                             plan.examples["reviews", "raymem-mini"], "redo"))
    for trial in finetune:
        shards = store.write_rows("runs", "finetune", trial.trial_id, pl.DataFrame({"status": ["ok"],
                                                                                 "wall_seconds": [1.0]}), "redo")
        store.mark_done(trial.trial_id, {}, shards)
    (tmp_path / "results" / "runs" / "finetune" / f"{finetune[0].trial_id}.parquet").write_bytes(b"PAR1")
    (tmp_path / "results" / MARKERS / f"{finetune[1].trial_id}.json").write_text("{}")  # results schema 1
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                         for line in out.splitlines() if line.startswith("| "))}
    assert rows["stage"][:5] == ["stage", "trials", "done", "redo", "failed"]
    assert rows["examples"][1:4] == ["1", "1", "0"] and rows["finetune"][1:4] == ["4", "2", "2"]
    assert "1 trial miss a shard or hold a damaged one" in out and "written by results schema 1" in out
