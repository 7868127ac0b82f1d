"""Where results live: Parquet shards, completion markers, checkpoints, DuckDB ingest.

Layout under the results root (a local folder or an s3:// URI, one code path):

    <table>/<stage>/<trial_id>.parquet   one shard per trial and table, written atomically
    _done/<trial_id>.json                completion marker: the trial is finished, with the
                                         results schema and the names and sizes of its shards
    _attempts/<trial_id>                 how many times the trial was started
    _locks/<study>.json                  the driver running the study (raymem/lock.py)
    checkpoints/<trial_id>/<name>/       safetensors checkpoints that later stages need
    checkpoints/<trial_id>/progress.pt   a training trial's resume state, until it finishes
    checkpoints/<trial_id>/parts/        the finished parts of a grouped trial, until it finishes
    tune/                                Ray Tune's own experiment state
    logs/<study>-<time>.log              Ray's own output during a study (raymem/terminal.py)
    raymem.duckdb                        built by `ingest` from the shards (local results)

Workers never open DuckDB; ingest rebuilds every table from the shards, so running it
twice gives the same database, never doubled rows. Ingest reads only raymem's own tables
(`SHARD_TABLES`): any other folder under the results root is refused, never pasted into SQL.

A marker counts only while it parses, was written by this results schema (`RESULTS_SCHEMA`)
and its shards are all there, at the sizes it recorded (and, on local disk, end in Parquet's
footer): otherwise the trial is redone. Local writes are flushed to disk (fsync) before the
rename that publishes them, so a power cut leaves no empty shard behind a complete marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymem.errors import ConfigError

VERSION = "0.1.0"
MARKERS = "_done"
ATTEMPTS = "_attempts"
LOCKS = "_locks"  # one driver per study (raymem/lock.py)
LOGS = "logs"  # Ray's own output during a study (raymem/terminal.py)
NOT_TABLES = {MARKERS, ATTEMPTS, LOCKS, LOGS, "checkpoints", "tune", "charts"}


# Schemes a results location may have; anything else before a colon is a mistake, not a folder.
SCHEMES = ("file", "s3")
# The storage probe's own limits: an endpoint that does not answer is said within seconds.
PROBE_CONNECT_S, PROBE_REQUEST_S, PROBE_ATTEMPTS = 3, 10, 2


def _scheme(uri: str) -> str | None:
    """The scheme of a results location, None for a local path; refuse what is neither."""
    if not uri.strip():
        raise ConfigError("results: empty; give a folder or an s3:// URI")
    head, colon, rest = uri.partition(":")
    if not colon or "/" in head:  # a path (a colon after a slash is part of a name)
        return None
    if head.lower() not in SCHEMES:
        hint = "" if rest.startswith("//") else f" (./{uri} for a folder of that name)"
        raise ConfigError(f"results: {uri!r} has an unknown scheme {head + ':'!r}; expected a folder{hint} "
                          f"or one of {', '.join(s + '://' for s in SCHEMES)}")
    if not rest.startswith("//"):  # s3:/bucket/x would otherwise become a local folder "s3:"
        raise ConfigError(f"results: {uri!r} is not a URI: expected {head}://... (two slashes)")
    return head.lower()


def _check_object_uri(uri: str) -> None:
    """s3://bucket[/key]: a bucket, and no empty part in the key. A bucket alone is the
    results root too."""
    bucket, _, key = uri.split("://", 1)[1].partition("?")[0].partition("/")
    if not bucket:
        raise ConfigError(f"results: storage URI {uri!r} names no bucket")
    if "//" in key or key.startswith("/"):
        raise ConfigError(f"results: storage URI {uri!r} has an empty part in its path (//)")


def _local_results(path: Path) -> Path:
    """An absolute local results folder; refused where it is a file or lies under one."""
    path = path.resolve()
    check_local_path(path, "results", folder=True)
    return path


def check_local_path(path: Path, field: str, folder: bool) -> None:
    """A local path raymem will create: it must not be a file (a folder) or a folder (a
    file), and the nearest part of it that exists must be a folder."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(f"{field}: cannot write to {path}: it is {'a file' if folder else 'a folder'}, "
                          f"not {'a folder' if folder else 'a file'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if not path.exists() and parent is not None and not parent.is_dir():
        raise ConfigError(f"{field}: cannot write to {path}: it lies under {parent}, which is a file")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

# What stored rows mean: raise it when a change alters the rows a trial writes for the same
# id; markers of another schema count as not done, so those trials are redone.
RESULTS_SCHEMA = 2
# The tables trials write (docs/asking-questions.md: the tables), and those derived from them as the database is
# built (raymem/analyses.py).
SHARD_TABLES = frozenset({
    "examples", "precog", "search", "predictions", "runs", "subset_predictions", "counterfactual",
    "layer_scores", "window_scores", "mcog", "events", "retrain_windows", "probe_curves",
    "control_accuracy", "neuron_scores", "neuron_layers", "neuron_summary", "neuron_deletion", "neuron_planted"})
DERIVED_TABLES = frozenset({"checks", "intervals", "precog_regression"})
PARQUET_MAGIC = b"PAR1"


def quote_ident(name: str) -> str:
    """A DuckDB identifier, quoted: double quotes inside it doubled."""
    return '"' + name.replace('"', '""') + '"'


def _fsync(path: str) -> None:
    """Flush a local file or folder to disk (a folder: the names it holds)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parquet_footer_ok(path: str) -> bool:
    """A local shard ends in Parquet's magic bytes: it was written whole."""
    try:
        with open(path, "rb") as f:
            f.seek(-len(PARQUET_MAGIC), os.SEEK_END)
            return f.read() == PARQUET_MAGIC
    except OSError:
        return False


class Store:
    def __init__(self, uri: str):
        scheme = _scheme(uri)
        if "@" in uri.partition("://")[2].partition("/")[0]:
            raise ConfigError("results: the storage URI holds credentials; give them in the "
                              "environment (AWS_ACCESS_KEY_ID, ...) or by an instance role")
        if scheme is None:
            self.uri = str(_local_results(Path(uri)))
        elif scheme == "file":
            self.uri = f"file://{_local_results(Path(uri[len('file://'):]))}"
        else:
            _check_object_uri(uri)
            self.uri = uri
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"results: cannot use storage URI {uri!r}: {exc}") from exc
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

        self._said: set[str] = set()  # trials whose marker was said not to count
        self._valid: set[tuple] = set()  # markers (path, size, mtime) checked valid: not read again

    def __reduce__(self):  # ship to Ray workers by URI; each rebuilds its filesystem
        return Store, (self.uri,)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def check_writable(self) -> None:
        """Fail early, before any trial, when the results location cannot be written: a
        small write and delete, with the probe's own short timeouts."""
        fs = self._probe_fs()
        probe = self._path(MARKERS, f".probe-{uuid.uuid4().hex}")
        try:
            fs.create_dir(self._path(MARKERS), recursive=True)
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
        except OSError as exc:
            raise ConfigError(f"results: cannot write to {self.uri}{self._where()}: tried to write and "
                              f"delete {probe}{self._tries()}: {_first_line(exc)}") from exc

    def check_reachable(self) -> None:
        """Fail early, before the first listing, when object storage does not answer: one
        listing of the results root, with the probe's own short timeouts (local: nothing)."""
        if self.is_local:
            return
        try:
            self._probe_fs().get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError as exc:
            raise ConfigError(f"results: cannot reach {self.uri}{self._where()}: tried to list "
                              f"{self.root}{self._tries()}: {_first_line(exc)}") from exc

    def _probe_fs(self) -> pafs.FileSystem:
        """The store's filesystem with short timeouts and few retries: the SDK's defaults
        retry an endpoint that does not answer for many seconds before they give up."""
        options = self._s3_options()
        if options is None:
            return self.fs
        options.update(connect_timeout=PROBE_CONNECT_S, request_timeout=PROBE_REQUEST_S)
        return pafs.S3FileSystem(**options,
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=PROBE_ATTEMPTS))

    def _where(self) -> str:
        """The endpoint and region an S3 store talks to, for its error messages."""
        options = self._s3_options()
        if options is None:
            return ""
        endpoint = (options.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL") or "AWS's own (no AWS_ENDPOINT_URL)")
        region = options.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return f" (endpoint {endpoint}, region {region or 'not set'})"

    def _s3_options(self) -> dict | None:
        """Every setting from_uri chose for an S3 store (the environment's included), as the
        filesystem pickles them; None for any other store."""
        if not isinstance(self.fs, pafs.S3FileSystem):
            return None
        return dict(self.fs.__reduce__()[1][0])

    def _tries(self) -> str:
        if self._s3_options() is None:
            return ""
        return f", {PROBE_ATTEMPTS} attempts of {PROBE_CONNECT_S} s to connect"

    # -- shards -----------------------------------------------------------------------
    def write_rows(self, table: str, stage: str, trial_id: str, rows: pl.DataFrame,
                   study: str) -> dict[str, int]:
        """Write one trial's rows of a table, with provenance, atomically; return the shard
        written, {path under the root: bytes}, for the trial's completion marker."""
        rows = rows.with_columns(
            pl.lit(study).alias("study"), pl.lit(stage).alias("stage"),
            pl.lit(trial_id).alias("trial_id"), pl.lit(VERSION).alias("raymem_version"),
            pl.lit(datetime.now(timezone.utc)).alias("created_at"))
        name = f"{table}/{stage}/{trial_id}.parquet"
        return {name: self._write_atomic(self._path(name), rows.to_arrow())}

    def _write_atomic(self, path: str, data: pa.Table) -> int:
        """Write a Parquet file whole or not at all; return its size in bytes."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if not self.is_local:  # an object-store put is atomic by itself
            buffer = pa.BufferOutputStream()
            pq.write_table(data, buffer)
            payload = buffer.getvalue()
            with self.fs.open_output_stream(path) as f:
                f.write(payload)
            return payload.size
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            pq.write_table(data, tmp, filesystem=self.fs)
            _fsync(tmp)  # on disk before the rename makes it the shard
            self.fs.move(tmp, path)
            _fsync(path.rsplit("/", 1)[0])
            return os.path.getsize(path)
        except BaseException:  # leave no half-written temp file behind
            if self.fs.get_file_info(tmp).type == pafs.FileType.File:
                self.fs.delete_file(tmp)
            raise

    def read_shard(self, table: str, stage: str, trial_id: str) -> pl.DataFrame:
        path = self._path(table, stage, f"{trial_id}.parquet")
        return pl.from_arrow(pq.read_table(path, filesystem=self.fs))

    def tables(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name not in NOT_TABLES)

    def shard_paths(self, table: str, trial_ids: set[str] | None = None) -> list[str]:
        """The shards of a table (all, or the given trials'), from one listing, sorted."""
        selector = pafs.FileSelector(self._path(table), recursive=True, allow_not_found=True)
        return sorted(i.path for i in self.fs.get_file_info(selector)
                      if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                      and (trial_ids is None or i.base_name[:-len(".parquet")] in trial_ids))

    def read_table(self, table: str, trial_ids: set[str] | None = None) -> pa.Table | None:
        """Every readable shard of a table, or only those of the given trials, in memory
        (a damaged shard belongs to a trial that is redone: it is left out)."""
        files, _ = self.readable_shards(table, trial_ids)
        if not files:
            return None
        parts = [pq.read_table(f, filesystem=self.fs) for f in files]
        return pa.concat_tables(parts, promote_options="permissive")

    def readable_shards(self, table: str, trial_ids: set[str] | None = None
                        ) -> tuple[dict[str, pa.Schema], list[str]]:
        """The shards of a table whose footer reads, with their schemas, and the others."""
        good, bad = {}, []
        for path in self.shard_paths(table, trial_ids):
            try:
                if self.is_local and not _parquet_footer_ok(path):
                    raise pa.ArrowInvalid("no Parquet footer")
                good[path] = pq.read_schema(path, filesystem=self.fs)
            except (pa.ArrowException, OSError):
                bad.append(path)
        return good, bad

    # -- completion markers ------------------------------------------------------------
    def is_done(self, trial_id: str) -> bool:
        info = self.fs.get_file_info(self._path(MARKERS, f"{trial_id}.json"))
        return info.type == pafs.FileType.File and not self.check_markers({trial_id: info})[1]

    def done_ids(self) -> set[str]:
        """Every finished trial, from one listing of the markers (not one request per trial);
        a marker that does not count is left out, and said once (`check_markers`)."""
        done, redo = self.check_markers()
        new = {t: why for t, why in redo.items() if t not in self._said}
        self._said |= set(new)
        for line in redo_lines(new):
            print(f"[store] {line}", flush=True)
        return done

    def check_markers(self, infos: dict[str, pafs.FileInfo] | None = None
                      ) -> tuple[set[str], dict[str, str]]:
        """(finished trials, {trial: why its marker does not count}). One listing of the
        markers; the markers and shards not yet seen valid by this store are read, their
        shards listed once per (table, stage) folder. Kept valid ones are not checked again."""
        if infos is None:
            selector = pafs.FileSelector(self._path(MARKERS), allow_not_found=True)
            infos = {i.base_name[:-len(".json")]: i for i in self.fs.get_file_info(selector)
                     if i.type == pafs.FileType.File and i.base_name.endswith(".json")}
        cache = self._valid
        done = {t for t, i in infos.items() if (i.path, i.size, i.mtime_ns) in cache}
        unseen = {t: i for t, i in infos.items() if t not in done}
        parsed = {}
        if unseen:
            with ThreadPoolExecutor(8) as pool:  # object storage: one small GET each, in parallel
                parsed = dict(zip(unseen, pool.map(self._read_marker, unseen.values())))
        redo = {}
        folders = {name.rsplit("/", 1)[0] for m in parsed.values() if isinstance(m, dict)
                   for name in m.get("shards", {})}
        listed = {}
        for folder in folders:
            selector = pafs.FileSelector(self._path(folder), allow_not_found=True)
            listed |= {f"{folder}/{i.base_name}": i for i in self.fs.get_file_info(selector)
                       if i.type == pafs.FileType.File}
        for trial, marker in parsed.items():
            why = self._marker_problem(marker, listed)
            if why:
                redo[trial] = why
            else:
                done.add(trial)
                info = unseen[trial]
                cache.add((info.path, info.size, info.mtime_ns))
        return done, redo

    def _read_marker(self, info: pafs.FileInfo) -> dict | None:
        try:
            with self.fs.open_input_stream(info.path) as f:
                marker = json.loads(f.read())
            ok = isinstance(marker, dict) and isinstance(marker.get("shards", {}), dict) and all(
                isinstance(size, int) for size in marker.get("shards", {}).values())
            return marker if ok else None
        except (OSError, ValueError):
            return None

    def _marker_problem(self, marker: dict | None, listed: dict[str, pafs.FileInfo]) -> str | None:
        """Why a parsed marker does not count (None: it does)."""
        if marker is None:
            return "unreadable marker"
        if marker.get("results_schema", 1) != RESULTS_SCHEMA:
            return f"results schema {marker.get('results_schema', 1)}"
        for name, size in marker.get("shards", {}).items():
            found = listed.get(name)
            if found is None or found.size != size or size == 0 or (
                    self.is_local and not _parquet_footer_ok(found.path)):
                return f"damaged shard {name}"
        return None

    def mark_done(self, trial_id: str, info: dict, shards: dict[str, int] | None = None) -> None:
        """The trial's completion marker: `info`, the results schema and the shards the trial
        wrote ({path under the root: bytes}, as `write_rows` returns them), checked on rerun."""
        marker = {**info, "results_schema": RESULTS_SCHEMA, "shards": dict(shards or {})}
        # atomic: a marker cut short by a kill would claim an unfinished trial
        self.put_bytes(json.dumps(marker, default=str).encode(), MARKERS, f"{trial_id}.json")

    # -- checkpoints -------------------------------------------------------------------
    def put_dir(self, local_dir: str | Path, *parts: str) -> int:
        """Copy a local folder into the store; return its size in bytes."""
        target = self._path(*parts)
        self.fs.create_dir(target, recursive=True)
        pafs.copy_files(str(Path(local_dir).resolve()), target,
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        if self.is_local:  # on disk before a marker may name the checkpoint
            for path in sorted(Path(target).rglob("*"), reverse=True):
                _fsync(str(path))
            _fsync(target)
        return sum(p.stat().st_size for p in Path(local_dir).rglob("*") if p.is_file())

    def get_dir(self, local_dir: str | Path, *parts: str) -> Path:
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self._path(*parts), str(Path(local_dir).resolve()),
                        source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return Path(local_dir)

    def size(self, *parts: str) -> int:
        """Bytes under a folder of the store (0 if absent)."""
        selector = pafs.FileSelector(self._path(*parts), recursive=True, allow_not_found=True)
        return sum(i.size or 0 for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def file_size(self, *parts: str) -> int:
        """Bytes of one file of the store (0 if absent)."""
        info = self.fs.get_file_info(self._path(*parts))
        return info.size or 0 if info.type == pafs.FileType.File else 0

    def files(self, *parts: str) -> list[str]:
        """The names of the files in a folder of the store, from one listing (none if absent)."""
        selector = pafs.FileSelector(self._path(*parts), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self._path(*parts)).type != pafs.FileType.NotFound

    def put_bytes(self, data: bytes, *parts: str) -> None:
        """Write a file whole or not at all (temp file and rename; an object put is atomic)."""
        path = self._path(*parts)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = path if not self.is_local else f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            if tmp != path:
                _fsync(tmp)  # on disk before the rename publishes it
                self.fs.move(tmp, path)
                _fsync(path.rsplit("/", 1)[0])
        except BaseException:
            if tmp != path and self.fs.get_file_info(tmp).type == pafs.FileType.File:
                self.fs.delete_file(tmp)
            raise

    def delete(self, *parts: str) -> None:
        """Remove a file or folder of the store; nothing if it is not there."""
        path = self._path(*parts)
        kind = self.fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            self.fs.delete_file(path)
        elif kind == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    def get_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self._path(*parts)) as f:
            return f.read()

    def local_path(self, *parts: str) -> str:
        """An absolute local path or URI under the results root (e.g. Tune's storage_path)."""
        return self._path(*parts) if self.is_local else "/".join([self.uri.rstrip("/"), *parts])


def redo_lines(redo: dict[str, str]) -> list[str]:
    """What `check_markers` found, one line per kind: how many trials are redone, and why."""
    kinds: dict[str, list[str]] = {}
    for trial, why in sorted(redo.items()):
        kinds.setdefault(why.split(" ")[0] if why.startswith("damaged") else why, []).append(trial)
    lines = []
    for kind, trials in kinds.items():
        n = f"{len(trials)} trial{'s' if len(trials) > 1 else ''}"
        they = "they are" if len(trials) > 1 else "it is"
        if kind.startswith("results schema"):
            lines.append(f"{n} {'were' if len(trials) > 1 else 'was'} written by {kind} (this is "
                         f"{RESULTS_SCHEMA}); {they} redone")
        elif kind == "damaged":
            lines.append(f"{n} miss a shard or hold a damaged one (e.g. {redo[trials[0]][len('damaged shard '):]}); "
                         f"{they} redone")
        else:
            lines.append(f"{n} {'have' if len(trials) > 1 else 'has'} an unreadable completion marker "
                         f"(e.g. {MARKERS}/{trials[0]}.json); {they} redone")
    return lines


def database_path(store: Store, database: str | None) -> Path:
    if database:
        return Path(database).resolve()
    if not store.is_local:
        raise ConfigError("database: results on object storage need a local `database:` path")
    return Path(store.root) / "raymem.duckdb"


def table_names(con) -> set[str]:
    """The tables of an open DuckDB connection."""
    return {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def write_derived(con, table: str, frame: pl.DataFrame) -> int:
    """Write a table derived in Python while the database is built (checks, intervals, the PreCog
    regression) into the open database, replacing it; return its row count."""
    if table not in DERIVED_TABLES:
        raise ValueError(f"{table!r} is not one of raymem's derived tables")
    con.register(f"{table}_frame", frame.to_arrow())
    con.execute(f"CREATE OR REPLACE TABLE {quote_ident(table)} AS SELECT * FROM "
                f"{quote_ident(table + '_frame')}").fetchall()
    con.unregister(f"{table}_frame")
    return frame.height


def ingested_path(db_path: Path) -> Path:
    """Beside the database: a hash of the trial ids it was built from."""
    return db_path.with_name(db_path.name + ".trials")


def trials_hash(trial_ids: set[str]) -> str:
    return hashlib.sha1("\n".join(sorted(trial_ids)).encode()).hexdigest()


def is_ingested(db_path: Path, trial_ids: set[str]) -> bool:
    """The database exists and was built from exactly these (finished) trials."""
    marker = ingested_path(db_path)
    return db_path.is_file() and marker.is_file() and marker.read_text().strip() == trials_hash(trial_ids)


def result_tables(store: Store) -> list[str]:
    """The tables under the results root; a folder that is none of raymem's is refused,
    naming it, before anything is written (its name would otherwise reach SQL)."""
    names = store.tables()
    unknown = [name for name in names if name not in SHARD_TABLES]
    if unknown:
        raise ConfigError(f"results: {', '.join(map(repr, unknown))} under {store.uri} "
                          f"{'is not a table' if len(unknown) == 1 else 'are not tables'} raymem writes "
                          f"({', '.join(sorted(SHARD_TABLES))}); move {'it' if len(unknown) == 1 else 'them'} "
                          f"out of the results folder")
    return names


def _comparable(kind: pa.DataType) -> pa.DataType:
    """A column type as ingest compares it: Arrow's 64-bit-offset strings are strings."""
    return {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}.get(kind, kind)


def check_one_schema(store: Store, table: str, schemas: dict[str, pa.Schema]) -> None:
    """A table's shards agree on every column's type (a column absent or all null in some is
    fine): shards of another results schema are refused, naming them, never cast."""
    seen: dict[str, tuple[pa.DataType, str]] = {}
    root = store.root.rstrip("/") + "/"
    for path, schema in schemas.items():
        for column in schema:
            if pa.types.is_null(column.type):
                continue
            first, where = seen.setdefault(column.name, (column.type, path))
            if _comparable(first) != _comparable(column.type):
                raise ConfigError(
                    f"ingest: table {table}: column {column.name!r} is {first} in {where.removeprefix(root)} "
                    f"but {column.type} in {path.removeprefix(root)}; the shards were written by "
                    f"different results schemas: remove the older ones (their trials are redone)")


def ingest(store: Store, db_path: Path, trial_ids: set[str] | None = None, log=print,
           derive=None) -> dict[str, int]:
    """Rebuild the DuckDB database from the tables' shards (all, or the given trials')
    and return the row counts.

    Builds into a temporary file and renames it over the old one, so readers never see
    a half-built database and a crash leaves the previous one intact. `derive(con)`, where
    given, builds the tables derived from the shards into that same file before it is
    published and returns their row counts (raymem/analyses.py: checks, intervals, the
    PreCog regression); the store itself knows only the shards' tables.
    """
    tables = result_tables(store)  # before anything is written
    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".duckdb", dir=db_path.parent)
    os.close(fd)
    os.unlink(tmp)  # duckdb creates the file itself
    counts = {}
    try:
        con = duckdb.connect(tmp)
        try:
            for table in tables:
                schemas, damaged = store.readable_shards(table, trial_ids)
                if damaged:  # their trials' markers do not count either: a rerun redoes them
                    log(f"[ingest] {table}: left out {len(damaged)} damaged shard(s), e.g. "
                        f"{damaged[0].removeprefix(store.root.rstrip('/') + '/')}; a rerun redoes their trials")
                if not schemas:
                    continue
                check_one_schema(store, table, schemas)
                name = quote_ident(table)
                if store.is_local:  # DuckDB reads the shards itself, streaming: flat in memory
                    con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet(?, union_by_name = true)",
                                [list(schemas)]).fetchall()
                else:  # object storage: through pyarrow's filesystem (DuckDB's httpfs may be absent)
                    con.register("shards", pa.concat_tables(
                        [pq.read_table(f, filesystem=store.fs) for f in schemas], promote_options="permissive"))
                    con.execute(f"CREATE TABLE {name} AS SELECT * FROM shards").fetchall()
                    con.unregister("shards")
                counts[table] = con.execute(f"SELECT COUNT(*) FROM {name}").fetchall()[0][0]
            if counts and derive is not None:
                counts |= derive(con)
        finally:
            con.close()
    except BaseException:  # an error or Ctrl-C: no half-built database left beside the results
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".wal").unlink(missing_ok=True)
        raise
    ingested_path(db_path).unlink(missing_ok=True)
    shutil.move(tmp, db_path)
    if trial_ids is not None:
        ingested_path(db_path).write_text(trials_hash(trial_ids) + "\n")
    return counts
