"""One driver at a time: a lock per study in the results store, and one per database.

    <results>/_locks/<study>.json   the study's lock (a local folder or an s3:// URI)
    <database>.lock                 the database's (a local file), so that two studies
                                    sharing a results folder never build one database

A lock file says who holds it: host, pid, the process's start (a reused pid is not taken
for the holder), since when, its last heartbeat and a random token. It is taken by an
exclusive create (locally a hard link, which fails where the file exists; on S3 a put conditional on no object being
there, If-None-Match: *), its heartbeat refreshed by a thread, and it is released when the
study ends, Ctrl-C included. A second driver is refused with a message naming the holder.

A lock is stale, and taken over, when its holder ran on this machine and is no longer
running (a killed driver), or when its heartbeat is older than STALE_AFTER_S (a holder on
another machine that crashed). A takeover replaces exactly the stale lock it read: locally
by renaming that file away and checking its token, on S3 by a put conditional on its ETag
(If-Match). S3 has honoured both conditions since 2024; an S3-compatible store that
ignores them gives no such guarantee (two drivers started within the same moment could
then both go on).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from raymem.errors import ConfigError
from raymem.store import LOCKS
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats


class LockHeld(ConfigError):
    """Another driver holds the lock (bad input: nothing was run or written)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc); '' if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = raw[raw.rindex(")") + 2:].split()
    return "" if fields[0] in "ZX" else fields[19]


def _running(pid: int, start: str) -> bool:
    """Whether the process that took the lock still runs (not only some process with its pid)."""
    if Path("/proc/self/stat").exists():
        now = _process_start(pid)
        return bool(now) and (not start or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Holder:
    what: str  # the study's name
    host: str
    pid: int
    pid_start: str
    boot_id: str
    started: str
    heartbeat: float
    token: str

    @staticmethod
    def me(what: str) -> "Holder":
        pid = os.getpid()
        return Holder(what, socket.gethostname(), pid, _process_start(pid), _boot_id(),
                      datetime.now(timezone.utc).isoformat(timespec="seconds"), time.time(),
                      secrets.token_hex(16))

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @staticmethod
    def decode(data: bytes) -> "Holder | None":
        try:
            return Holder(**json.loads(data))
        except (ValueError, TypeError):  # cut short or foreign: treated as stale
            return None

    def is_stale(self, now: float | None = None) -> bool:
        if self.host == socket.gethostname() and self.boot_id == _boot_id():
            return not _running(self.pid, self.pid_start)  # this machine can tell for sure
        return (now or time.time()) - self.heartbeat > STALE_AFTER_S

    def describe(self) -> str:
        return f"study {self.what} on {self.host} (pid {self.pid}, since {self.started})"


class LocalFile:
    """A lock file on a local filesystem."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.where = str(self.path)

    def create(self, data: bytes) -> bool:
        """Exclusive and whole: written beside it, then linked in (fails if it exists),
        so no reader ever sees a lock without its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def read(self) -> tuple[bytes, object] | None:
        try:
            return self.path.read_bytes(), None
        except FileNotFoundError:
            return None

    def take_over(self, stale: bytes, version, data: bytes) -> bool:
        """Replace the lock if it is still the stale one read (moved away first: only one
        process can move a given file)."""
        grave = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return self.create(data)
        if grave.read_bytes() != stale:  # another driver took it over meanwhile: put it back
            with contextlib.suppress(FileExistsError):
                os.link(grave, self.path)
            grave.unlink()
            return False
        grave.unlink()
        return self.create(data)

    def refresh(self, mine: bytes, data: bytes) -> bool:
        current = self.read()
        if current is None or current[0] != mine:
            return False
        tmp = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        return True

    def delete(self, mine: bytes) -> None:
        current = self.read()
        if current is not None and current[0] == mine:
            self.path.unlink(missing_ok=True)


class S3Object:
    """A lock object on S3, written with conditional puts (s3fs; the endpoint and
    credentials come from the environment, as for the store)."""

    def __init__(self, uri: str):
        import s3fs

        self.fs = s3fs.S3FileSystem()
        self.key = uri.split("://", 1)[1]
        self.where = uri

    def create(self, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.key, data, mode="create")  # If-None-Match: *
        except FileExistsError:
            return False
        return True

    def read(self) -> tuple[bytes, object] | None:
        try:
            info = self.fs.info(self.key, refresh=True)
            return self.fs.cat_file(self.key), info["ETag"]
        except FileNotFoundError:
            return None

    def _put_if(self, data: bytes, etag) -> bool:
        try:
            self.fs.pipe_file(self.key, data, IfMatch=etag)
        except (OSError, FileNotFoundError):  # precondition failed: no longer that object
            return False
        return True

    def take_over(self, stale: bytes, version, data: bytes) -> bool:
        return self._put_if(data, version)

    def refresh(self, mine: bytes, data: bytes) -> bool:
        current = self.read()
        return current is not None and current[0] == mine and self._put_if(data, current[1])

    def delete(self, mine: bytes) -> None:
        current = self.read()
        if current is not None and current[0] == mine:
            self.fs.rm_file(self.key)


class Lock:
    """Hold `target` (a LocalFile or S3Object) for `what`, the study; `refused(holder)`
    is the message for a second driver."""

    def __init__(self, target, what: str, refused, log=print, heartbeat_s: float = HEARTBEAT_S):
        self.target, self.what, self.refused, self.log = target, what, refused, log
        self.heartbeat_s = heartbeat_s
        self.holder: Holder | None = None
        self._data = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        me = Holder.me(self.what)
        for _ in range(5):  # each round: it was free, or held, or went meanwhile
            data = me.encode()
            if self.target.create(data):
                return self._held(me, data)
            current = self.target.read()
            if current is None:
                continue
            holder = Holder.decode(current[0])
            if holder is not None and not holder.is_stale():
                raise LockHeld(self.refused(holder))
            self.log(f"[lock] {self.target.where}: taking over the lock of "
                     f"{holder.describe() if holder else 'an unreadable holder'}, which is no longer running")
            if self.target.take_over(current[0], current[1], data):
                return self._held(me, data)
        raise LockHeld(f"{self.target.where}: could not take the lock; another driver keeps taking it")

    def _held(self, me: Holder, data: bytes) -> None:
        self.holder, self._data = me, data
        self._thread = threading.Thread(target=self._beat, name="raymem-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.holder.heartbeat = time.time()
            data = self.holder.encode()
            try:
                if not self.target.refresh(self._data, data):
                    self.log(f"[lock] {self.target.where}: this driver no longer holds the lock "
                             f"(taken over); stop it, another driver is running the study")
                    return
            except OSError:  # a storage hiccup: the next beat tries again
                continue
            self._data = data

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.holder is not None:
            with contextlib.suppress(OSError):
                self.target.delete(self._data)
            self.holder = None


def study_lock_target(store, study: str):
    """Where a study's lock lives in its results store."""
    if store.is_local:
        return LocalFile(Path(store.root) / LOCKS / f"{study}.json")
    return S3Object("/".join([store.uri.rstrip("/"), LOCKS, f"{study}.json"]))


@contextlib.contextmanager
def hold_study(store, study: str, db_path: Path, log=print):
    """Hold the study's lock and its database's while the block runs (refused: LockHeld)."""
    study_lock = Lock(study_lock_target(store, study), study, lambda holder: (
        f"results: {holder.describe()} is already running on {store.uri}; wait for it to end or "
        f"stop it (its lock, {store.uri}/{LOCKS}/{study}.json, is taken over once that process has "
        f"ended, or {STALE_AFTER_S:.0f}s after its last heartbeat if it ran on another machine)"), log)
    database_lock = Lock(LocalFile(db_path.with_name(db_path.name + ".lock")), study, lambda holder: (
        f"database: {db_path} is being built by {holder.describe()}; two studies cannot share one "
        f"database: give this study a `database:` path of its own (or its own `results:`)"), log)
    study_lock.acquire()
    try:
        database_lock.acquire()
        try:
            yield
        finally:
            database_lock.release()
    finally:
        study_lock.release()
