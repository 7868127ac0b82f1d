"""raymem.store.Store against an S3-compatible server (moto in server mode, on loopback).

The endpoint comes only from the standard AWS_ENDPOINT_URL variable and the credentials
only from the environment: pyarrow's S3FileSystem.from_uri honours both by itself, so
`results: s3://bucket/prefix` takes the same code path as a local folder. Every
credential here is a fake one set for the test.
"""

from __future__ import annotations

import logging
import socket
import uuid

import duckdb
import polars as pl
import pytest

from raymem.errors import ConfigError
from raymem.store import Store, database_path, ingest

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata service
}
NOT_INHERITED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3",
                 "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """One moto server on 127.0.0.1 for this module; stopped at its end."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials in the environment, nothing read from the user's ~/.aws."""
    for name in NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return monkeypatch


@pytest.fixture
def bucket(s3_endpoint, aws_env):
    """A fresh bucket on the moto server; AWS_ENDPOINT_URL points at it."""
    aws_env.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = f"raymem-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _keys(endpoint: str, bucket: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _rows(n: int, task: str) -> pl.DataFrame:
    return pl.DataFrame({"example_id": list(range(n)), "task": [task] * n,
                         "score": [i / 10 for i in range(n)]})


def test_endpoint_comes_from_aws_endpoint_url(s3_endpoint, bucket):
    store = Store(f"s3://{bucket}/prefix")
    assert not store.is_local
    assert store.root == f"{bucket}/prefix"
    store.check_writable()  # a real round trip to the moto server
    # The probe is deleted again; only pyarrow's empty directory markers stay.
    assert all(k.endswith("/") for k in _keys(s3_endpoint, bucket))


def test_shards_markers_and_checkpoints_round_trip(s3_endpoint, bucket, tmp_path):
    store = Store(f"s3://{bucket}/prefix")
    store.write_rows("precog", "precog", "t-aaa", _rows(3, "a"), study="demo")
    store.write_rows("precog", "precog", "t-bbb", _rows(2, "b"), study="demo")
    store.write_rows("predictions", "finetune", "t-ccc", _rows(4, "a"), study="demo")

    keys = _keys(s3_endpoint, bucket)
    assert "prefix/precog/precog/t-aaa.parquet" in keys
    assert "prefix/predictions/finetune/t-ccc.parquet" in keys
    assert not [k for k in keys if ".tmp-" in k]  # an object-store put needs no temp file

    assert store.tables() == ["precog", "predictions"]
    table = store.read_table("precog")
    assert table.num_rows == 5
    assert set(table.column("trial_id").to_pylist()) == {"t-aaa", "t-bbb"}
    assert set(table.column("study").to_pylist()) == {"demo"}
    assert store.read_shard("predictions", "finetune", "t-ccc")["example_id"].to_list() == [0, 1, 2, 3]
    assert store.read_table("no_such_table") is None

    assert not store.is_done("t-aaa")
    store.mark_done("t-aaa", {"rows": 3})
    assert store.is_done("t-aaa")
    assert not store.is_done("t-bbb")
    assert "prefix/_done/t-aaa.json" in _keys(s3_endpoint, bucket)
    assert "_done" not in store.tables()

    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"\x00\x01weights" * 100)
    (ckpt / "sub" / "config.json").write_text('{"layers": 2}')
    size = store.put_dir(ckpt, "checkpoints", "t-aaa", "model")
    assert size == 900 + len('{"layers": 2}')
    assert "prefix/checkpoints/t-aaa/model/sub/config.json" in _keys(s3_endpoint, bucket)
    assert "checkpoints" not in store.tables()

    back = store.get_dir(tmp_path / "back", "checkpoints", "t-aaa", "model")
    assert (back / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert (back / "sub" / "config.json").read_text() == '{"layers": 2}'

    assert store.local_path("tune") == f"s3://{bucket}/prefix/tune"


def test_store_survives_pickling_to_a_worker(bucket):
    import pickle

    store = Store(f"s3://{bucket}/prefix")
    store.mark_done("t-1", {})
    again = pickle.loads(pickle.dumps(store))  # what Ray does when shipping it to a worker
    assert again.uri == store.uri and again.is_done("t-1")


def test_ingest_from_s3_builds_a_local_database_idempotently(bucket, tmp_path):
    store = Store(f"s3://{bucket}/results")
    for i, n in enumerate([3, 5, 7]):
        store.write_rows("precog", "precog", f"p-{i}", _rows(n, "a"), study="demo")
    store.write_rows("predictions", "finetune", "f-0", _rows(11, "b"), study="demo")
    store.mark_done("p-0", {})
    store.put_dir(_checkpoint(tmp_path), "checkpoints", "f-0", "model")

    with pytest.raises(ConfigError, match="database"):
        database_path(store, None)  # results on S3 need a local database path
    db = database_path(store, str(tmp_path / "db" / "raymem.duckdb"))

    expected = {"precog": 15, "predictions": 11}
    assert ingest(store, db) == expected
    assert _db_counts(db) == expected
    assert ingest(store, db) == expected  # a rerun rebuilds, never doubles
    assert _db_counts(db) == expected
    assert sorted(p.name for p in db.parent.iterdir()) == ["raymem.duckdb"]  # no temp left


def _checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"w")
    return ckpt


def _db_counts(db) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


# -- bad storage locations fail early, as ConfigError, naming the URI ---------------------

@pytest.mark.parametrize("uri, words", [
    ("s3:///prefix-without-bucket", "names no bucket"),
    ("nosuchscheme://bucket/prefix", "unknown scheme 'nosuchscheme:'"),
    ("s3:/bucket/x", "is not a URI: expected s3://... (two slashes)"),  # not a local folder "s3:"
    ("s3:bucket/x", "is not a URI"),
    ("results:old", "unknown scheme 'results:'; expected a folder (./results:old for a folder"),
    ("s3://bucket//x", "an empty part in its path"),
    ("s3://bucket/x//y", "an empty part in its path"),
    ("", "results: empty"),
    ("  ", "results: empty"),
])
def test_malformed_uri_is_a_config_error(aws_env, uri, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        Store(uri)
    message = str(info.value)
    assert message.startswith("results: ") and words in message
    assert uri.strip() == "" or repr(uri) in message
    assert list(tmp_path.iterdir()) == []  # nothing made, not even a folder named after the URI


def test_a_bucket_alone_is_a_results_root(bucket):
    for uri in (f"s3://{bucket}", f"s3://{bucket}/"):
        store = Store(uri)
        assert store.root.strip("/") == bucket
        store.check_writable()


def test_local_paths_and_file_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Store("results").uri == str(tmp_path / "results")
    assert Store("./results:old").uri == str(tmp_path / "results:old")  # a colon after a slash is a name
    assert Store(f"file://{tmp_path}/r").is_local
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match="results: cannot write to .*taken: it is a file, not a folder"):
        Store("taken")
    with pytest.raises(ConfigError, match="results: cannot write to .*lies under .*taken, which is a file"):
        Store(f"file://{tmp_path}/taken/deeper/r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_missing_bucket_is_a_config_error(bucket):
    store = Store("s3://raymem-no-such-bucket/prefix")
    with pytest.raises(ConfigError) as info:
        store.check_writable()
    message = str(info.value)
    assert "results: cannot write to s3://raymem-no-such-bucket/prefix" in message
    assert "raymem-no-such-bucket" in message.split(":", 2)[2]  # the cause names the bucket


def test_a_reachable_store_passes_the_probe(bucket):
    Store(f"s3://{bucket}/prefix").check_reachable()  # one listing of the moto server


@pytest.mark.parametrize("probe, tried", [("check_reachable", "tried to list raymem-bucket/prefix"),
                                          ("check_writable", "tried to write and delete")])
def test_unreachable_endpoint_is_one_clear_error_within_seconds(aws_env, probe, tried):
    """Nothing listens on the port: the probe's own timeouts and two attempts, not the
    SDK's retries, then one message naming the URI, endpoint, region and what was tried."""
    import time

    endpoint = f"http://127.0.0.1:{_free_port()}"
    aws_env.setenv("AWS_ENDPOINT_URL", endpoint)
    store = Store("s3://raymem-bucket/prefix")  # building the filesystem needs no network
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        getattr(store, probe)()
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert message.startswith("results: cannot ") and "s3://raymem-bucket/prefix" in message
    for words in (f"endpoint {endpoint}", "region us-east-1", tried, "2 attempts", "connect"):
        assert words in message, message
    assert "\n" not in message


def test_endpoint_override_in_the_uri_is_named(aws_env):
    endpoint = f"http://127.0.0.1:{_free_port()}"
    aws_env.delenv("AWS_ENDPOINT_URL", raising=False)
    store = Store(f"s3://raymem-bucket/prefix?endpoint_override={endpoint}&scheme=http&region=eu-west-1")
    with pytest.raises(ConfigError) as info:
        store.check_reachable()
    assert f"endpoint {endpoint}" in str(info.value) and "region eu-west-1" in str(info.value)


# -- URIs refused before anything is written ---------------------------------------

def test_uri_without_a_bucket_is_a_config_error(aws_env):
    aws_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # never the internet
    with pytest.raises(ConfigError, match="s3://"):
        Store("s3://").check_writable()


def test_credentials_in_the_uri_are_refused(aws_env):
    aws_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # never the internet
    with pytest.raises(ConfigError) as info:
        Store("s3://EXAMPLEKEYID:fake-secret@raymem-bucket/prefix")
    assert "fake-secret" not in str(info.value)
