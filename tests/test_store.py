"""Result storage: Parquet shards with provenance, atomic writes, markers, DuckDB ingest."""

import json
from datetime import datetime, timedelta, timezone

import duckdb
import polars as pl
import pytest

from raymem import store as store_module
from raymem.errors import ConfigError
from raymem.store import VERSION, Store, database_path, ingest


def _rows(n, offset=0):
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(offset, offset + n)],
                         "score": [i / 10 for i in range(offset, offset + n)]})


def test_write_rows_adds_provenance(tmp_path):
    store = Store(str(tmp_path / "results"))
    before = datetime.now(timezone.utc)
    store.write_rows("precog", "precog", "precog-abc", _rows(3), study="demo")
    got = store.read_shard("precog", "precog", "precog-abc")
    assert got.columns[:2] == ["example_id", "score"]
    assert {"study", "stage", "trial_id", "raymem_version", "created_at"} <= set(got.columns)
    assert got["example_id"].to_list() == ["e0", "e1", "e2"]
    assert got["score"].to_list() == [0.0, 0.1, 0.2]
    assert set(got["study"]) == {"demo"} and set(got["stage"]) == {"precog"}
    assert set(got["trial_id"]) == {"precog-abc"} and set(got["raymem_version"]) == {VERSION}
    created = got["created_at"]
    assert created.dtype.time_zone == "UTC"
    assert created.n_unique() == 1
    assert before - timedelta(seconds=1) <= created[0] <= datetime.now(timezone.utc)
    # The layout the ingest and the docs rely on.
    assert (tmp_path / "results" / "precog" / "precog" / "precog-abc.parquet").is_file()


def test_write_rows_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = Store(str(tmp_path))
    for i in range(3):
        store.write_rows("examples", "examples", f"t{i}", _rows(2, 2 * i), study="s")
    store.write_rows("examples", "examples", "t0", _rows(5), study="s")  # a rerun replaces
    files = sorted(p.name for p in (tmp_path / "examples" / "examples").iterdir())
    assert files == ["t0.parquet", "t1.parquet", "t2.parquet"]
    assert not list(tmp_path.rglob("*.tmp-*"))
    assert store.read_shard("examples", "examples", "t0").height == 5


def _failing_write(path_marker):
    """A pq.write_table that leaves a half-written file, then fails (a crash mid-write)."""
    def write_table(data, where, filesystem=None):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        path_marker.append(where)
        raise OSError("disk full")
    return write_table


def test_a_failed_write_leaves_no_shard(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    written = []
    monkeypatch.setattr(store_module.pq, "write_table", _failing_write(written))
    with pytest.raises(OSError):
        store.write_rows("precog", "precog", "t1", _rows(2), study="s")
    assert ".tmp-" in written[0]  # it wrote to a temporary name, never the shard itself
    assert not (tmp_path / "precog" / "precog" / "t1.parquet").exists()
    monkeypatch.undo()
    assert store.read_table("precog") is None  # half-written temp files are never read


def test_a_failed_write_cleans_up_its_temp_file(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    monkeypatch.setattr(store_module.pq, "write_table", _failing_write([]))
    with pytest.raises(OSError):
        store.write_rows("precog", "precog", "t1", _rows(2), study="s")
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_markers(tmp_path):
    store = Store(str(tmp_path))
    assert not store.is_done("finetune-1")
    store.mark_done("finetune-1", {"task": "t", "seed": 2, "when": datetime(2024, 1, 1)})
    assert store.is_done("finetune-1")
    assert not store.is_done("finetune-2")
    info = json.loads((tmp_path / "_done" / "finetune-1.json").read_text())
    assert info["task"] == "t" and info["seed"] == 2 and info["when"].startswith("2024-01-01")
    # A marker is not a table.
    assert store.tables() == []


def test_tables_skip_markers_checkpoints_tune_and_charts(tmp_path):
    store = Store(str(tmp_path))
    store.write_rows("runs", "finetune", "t1", pl.DataFrame({"status": ["ok"]}), study="s")
    store.mark_done("t1", {})
    for name in ("checkpoints/t1/final", "tune/x", "charts"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "raymem.duckdb").write_bytes(b"")
    assert store.tables() == ["runs"]
    assert Store(str(tmp_path / "nowhere")).tables() == []


def test_read_table_combines_shards_with_different_columns(tmp_path):
    store = Store(str(tmp_path))
    store.write_rows("runs", "precog", "a", pl.DataFrame({"status": ["ok"]}), study="s")
    store.write_rows("runs", "finetune", "b", pl.DataFrame({"status": ["failed"], "seed": [3]}),
                     study="s")
    table = pl.from_arrow(store.read_table("runs")).sort("trial_id")
    assert table["status"].to_list() == ["ok", "failed"]
    assert table["seed"].to_list() == [None, 3]


def _fill(store):
    store.write_rows("examples", "examples", "ex-1", _rows(4), study="s")
    store.write_rows("examples", "examples", "ex-2", _rows(3, 10), study="s")
    store.write_rows("precog", "precog", "pc-1", _rows(5), study="s")
    store.mark_done("ex-1", {})


def _counts(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "ORDER BY 1").fetchall()]
        return {n: con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def test_ingest_twice_gives_the_same_tables(tmp_path):
    store = Store(str(tmp_path))
    _fill(store)
    db = database_path(store, None)
    assert db == tmp_path / "raymem.duckdb"
    first = ingest(store, db)
    assert first == {"examples": 7, "precog": 5}
    assert _counts(db) == first
    second = ingest(store, db)
    assert second == first and _counts(db) == first  # rebuilt, not appended
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["raymem.duckdb"]
    con = duckdb.connect(str(db), read_only=True)
    ids = con.execute("SELECT example_id, trial_id FROM examples ORDER BY example_id").fetchall()
    con.close()
    assert ids[:2] == [("e0", "ex-1"), ("e1", "ex-1")] and ("e10", "ex-2") in ids


def test_ingest_replaces_an_old_database(tmp_path):
    store = Store(str(tmp_path))
    db = tmp_path / "raymem.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE stale AS SELECT 1 AS x")
    con.execute("CREATE TABLE examples AS SELECT * FROM range(100)")
    con.close()
    _fill(store)
    counts = ingest(store, db)
    assert _counts(db) == counts == {"examples": 7, "precog": 5}


def test_ingest_to_a_separate_database_path(tmp_path):
    store = Store(str(tmp_path / "results"))
    _fill(store)
    db = database_path(store, str(tmp_path / "db" / "my.duckdb"))
    assert db == (tmp_path / "db" / "my.duckdb").resolve()
    ingest(store, db)
    assert _counts(db) == {"examples": 7, "precog": 5}


def test_build_database_adds_the_derived_tables_before_it_is_published(tmp_path):
    from raymem.analyses import build_database

    store = Store(str(tmp_path))
    _fill(store)
    db = tmp_path / "raymem.duckdb"
    counts = build_database(store, db)
    assert counts == {"examples": 7, "precog": 5, "checks": 0, "intervals": 0} == _counts(db)
    seen = []  # derive runs on the database being built, not on the published one
    ingest(store, db, derive=lambda con: seen.append(con.execute("SELECT current_database()").fetchone()[0])
           or {})
    assert seen and seen[0] != "raymem"


def test_ingest_of_nothing_gives_an_empty_database(tmp_path):
    store = Store(str(tmp_path))
    assert ingest(store, tmp_path / "raymem.duckdb") == {}
    assert _counts(tmp_path / "raymem.duckdb") == {}


def test_store_paths_and_pickling(tmp_path, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    store = Store("results")
    assert store.uri == str(tmp_path / "results") and store.is_local
    assert not (tmp_path / "results").exists()  # constructing a store writes nothing
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri and clone.is_local
    assert store.local_path("tune") == str(tmp_path / "results" / "tune")


def test_check_writable(tmp_path):
    store = Store(str(tmp_path / "results"))
    store.check_writable()
    assert list((tmp_path / "results" / "_done").iterdir()) == []  # the probe is removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        Store(str(tmp_path / "file" / "below")).check_writable()


def test_object_storage_needs_a_local_database_path():
    store = Store.__new__(Store)
    store.is_local = False
    with pytest.raises(ConfigError, match="database"):
        database_path(store, None)


def test_checkpoint_dirs_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"x" * 10)
    (src / "config.json").write_text("{}")
    store = Store(str(tmp_path / "results"))
    assert store.put_dir(src, "checkpoints", "t1", "final") == 12
    (tmp_path / "back").mkdir()
    out = store.get_dir(tmp_path / "back", "checkpoints", "t1", "final")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"x" * 10


def test_get_dir_creates_the_local_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    store = Store(str(tmp_path / "results"))
    store.put_dir(src, "checkpoints", "t1", "final")
    out = store.get_dir(tmp_path / "new" / "folder", "checkpoints", "t1", "final")
    assert (out / "config.json").read_text() == "{}"
