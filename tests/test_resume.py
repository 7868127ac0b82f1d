"""Resuming and failing on a real Ray: a killed driver, lost workers, a trial that fails.

a. The driver of `raymem study` is SIGKILLed (with its whole process group) after some
   but not all fine-tuning trials finished; a rerun of the same study finishes the rest,
   and its database equals that of an uninterrupted run of the same study, row for row.
b. While fine-tuning trials run on a Ray head this test started, their worker processes
   (found through Ray's actor table) are SIGKILLed after an epoch k; Tune retries them
   (FailureConfig max_failures), each retry starts at epoch k+1 from the trial's progress
   checkpoint, and the study still ends with every trial's rows exactly once and the
   same predictions as the uninterrupted run.
c. A model whose weights file is cut short passes planning (which reads a model's config
   and tokenizer, not its weights); its trial fails inside Ray, is recorded as failed
   with its error, the other trial finishes, and the study exits 1 naming the failure.

Two more tests guard fixes found on the way: fine-tuning truncates at the model's
position limit, and a local study ignores a cluster that `ray start` recorded.

Every Ray this module starts runs under its own RAY_TMPDIR, so it neither finds nor is
found by another Ray on the machine (`ray.init()` connects to the cluster recorded in
<tmp>/ray/ray_current_cluster by `ray start`), and it is stopped by killing only the
processes in the session the test created: never `ray stop`, which kills every Ray
process on the machine by name. Linux only (process sessions are read from /proc).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from raymem.localcluster import stop_session
from raymem.runtime import HOLD_DIR
from results_db import assert_same_database, fetch

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

SUBSAMPLE = {"train": 48, "validation": 16, "test": 24}
SEEDS = [1, 2]
VARIANTS = ["clean", "noisy"]
K = [1, 5]
N_FINETUNE = len(SEEDS) * len(VARIANTS)
# Columns that legitimately differ between two runs of the same study: when a row was
# written, and how long a trial took. Everything else (trial ids, parameters, labels,
# PreCog scores, p_label, storage_bytes...) must be identical: seeds are fixed and every
# trial runs on one thread (Ray sets OMP_NUM_THREADS to the trial's 1 CPU).
# How often a trial was started and from which epoch it resumed differ too: they say how
# the run went, not what it computed.
VOLATILE = {"created_at", "wall_seconds", "attempts", "resumed_from_epoch", "epochs_trained"}
STUDY_TIMEOUT = 420


# -- processes (by session: every process a started session leader spawned) ----------
def _stat(pid: int) -> dict | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return {"pid": pid, "comm": raw[raw.index("(") + 1:raw.rindex(")")], "state": fields[0],
            "session": int(fields[3]), "start": int(fields[19])}


def _session(sid: int) -> list[dict]:
    """Live processes of the session `sid` (a session leader this test started)."""
    procs = (_stat(int(d)) for d in os.listdir("/proc") if d.isdigit())
    return [p for p in procs if p and p["session"] == sid and p["state"] not in "ZX"]


def _alive(proc: dict) -> bool:
    now = _stat(proc["pid"])
    return now is not None and now["start"] == proc["start"] and now["state"] not in "ZX"


# -- studies --------------------------------------------------------------------------
class Runs:
    """Studies and Ray heads started by this module: their own temp dirs and sessions."""

    def __init__(self):
        # Short: Ray's socket paths under it must stay below the 107-byte limit.
        self.root = Path(tempfile.mkdtemp(prefix="rmres-", dir="/tmp"))
        self.sessions: list[int] = []

    def env(self, ray_tmp: str = "local", **extra) -> dict:
        tmp = self.root / ray_tmp
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_TMPDIR": str(tmp),
               "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        env.update(extra)
        return env

    def start(self, args: list, log: Path, env: dict) -> subprocess.Popen:
        with open(log, "w") as out:
            proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT,
                                    cwd=REPO, env=env, start_new_session=True)
        self.sessions.append(proc.pid)
        return proc

    def study(self, file: Path, results: Path, log: Path, env: dict | None = None,
              options: tuple = ()) -> subprocess.Popen:
        return self.start([sys.executable, "-m", "raymem.cli", "study", file, "--results", results, *options],
                          log, env or self.env())

    def close(self) -> None:
        try:
            for sid in self.sessions:
                stop_session(sid, grace=2.0)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = STUDY_TIMEOUT) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"study did not finish in {timeout}s:\n{_tail(log)}")


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:]


def _finetune_markers(results: Path) -> set[str]:
    return {p.stem for p in (results / "_done").glob("finetune-*.json")}


def _study(tiny_mlm, **overrides) -> dict:
    study = {
        "study": "resume", "results": "set-by---results", "models": [str(tiny_mlm)],
        "tasks": ["tweet_sentiment"], "seeds": SEEDS, "subsample": SUBSAMPLE,
        "precog": {"k": K, "max_length": 48, "actors": {"min_size": 1, "max_size": 1}},
        # 4 epochs: a trial reports 3 epochs before it ends, a window wide enough for the
        # lost-workers test to catch its worker mid-training (with 2 it sometimes did not)
        "finetune": {"variants": VARIANTS, "epochs": 4, "lr": 1e-3, "batch_size": 16,
                     "max_length": 48},
        "ray": {"num_cpus": 2},
    }
    study.update(overrides)
    return study


def _write(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


def _assert_complete(db: Path, n_finetune: int = N_FINETUNE) -> None:
    """Every planned trial's rows exactly once, and every run ok."""
    runs = fetch(db, "SELECT stage, trial_id, status FROM runs ORDER BY ALL")
    assert len(runs) == 1 + n_finetune, runs  # the precog run and the fine-tuning trials
    assert len({r[1] for r in runs}) == len(runs)
    assert {r[2] for r in runs} == {"ok"}
    finetuned = {r[1] for r in runs if r[0] == "finetune"}
    assert {r[0] for r in fetch(db, "SELECT DISTINCT trial_id FROM predictions")} == finetuned
    dupes = fetch(db, """SELECT COUNT(*) FROM (
        SELECT trial_id, checkpoint, split, example_id, COUNT(*) n FROM predictions
        GROUP BY ALL HAVING n > 1)""")
    assert dupes == [(0,)]
    # per trial: train + eval split at "final", and again at "memorised" when it got there
    per_trial = fetch(db, """SELECT p.trial_id, COUNT(*), ANY_VALUE(r.memorised_epoch) IS NOT NULL
                            FROM predictions p JOIN runs r USING (trial_id) GROUP BY 1""")
    per_checkpoint = SUBSAMPLE["train"] + SUBSAMPLE["test"]
    for trial_id, n, memorised in per_trial:
        assert n == per_checkpoint * (1 + memorised), trial_id
    assert fetch(db, "SELECT COUNT(*) FROM precog") == [(SUBSAMPLE["test"] * len(K),)]
    assert fetch(db, "SELECT COUNT(*) FROM examples") == [(sum(SUBSAMPLE.values()),)]


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs():
    r = Runs()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def study_file(tiny_mlm, tmp_path_factory):
    return _write(tmp_path_factory.mktemp("resume") / "study.yaml", _study(tiny_mlm))


@pytest.fixture(scope="module")
def reference(runs, study_file, tmp_path_factory):
    """An uninterrupted run of the study, started at once and awaited when needed."""
    root = tmp_path_factory.mktemp("reference")
    proc = runs.study(study_file, root / "results", root / "study.log")

    def done() -> Path:
        code = _wait(proc, root / "study.log")
        assert code == 0, _tail(root / "study.log")
        return root / "results" / "raymem.duckdb"
    return done


def _status(runs, study_file: Path, results: Path) -> dict[str, dict[str, int]]:
    """`raymem status`'s table: stage -> its counts (it reads the store alone)."""
    out = subprocess.run([sys.executable, "-m", "raymem.cli", "status", str(study_file), "--results", str(results)],
                         capture_output=True, text=True, env=runs.env(), cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines()
            if line.startswith("| ") and "---" not in line]
    header, *body = rows
    counts = ("trials", "done", "redo", "failed", "started", "pending")
    return {row[0]: {k: int(v) for k, v in zip(header, row) if k in counts} for row in body}


def _start_until_a_trial_finished(runs, study_file: Path, results: Path, log: Path) -> subprocess.Popen:
    """Start the study; return once its first fine-tuning trial has finished (it runs on)."""
    first = runs.study(study_file, results, log)
    deadline = time.time() + STUDY_TIMEOUT
    while not _finetune_markers(results) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, f"the study ended before any trial finished:\n{_tail(log)}"
    return first


# -- a. the driver is killed ----------------------------------------------------------
def test_killed_driver_resumes_to_the_same_database(runs, study_file, reference, tmp_path):
    study = yaml.safe_load(study_file.read_text())
    results, log = tmp_path / "results", tmp_path / "first.log"
    first = _start_until_a_trial_finished(runs, study_file, results, log)
    # The driver's descendants now: its local Ray (GCS, raylet, dashboard) and workers.
    ray_procs = [p for p in _session(first.pid) if p["pid"] != first.pid]
    assert any(p["comm"] == "raylet" for p in ray_procs), ray_procs
    # The driver's process group: the driver and the Ray daemons it started (its workers
    # have process groups of their own; they go when their raylet does).
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    finished = _finetune_markers(results)
    assert 1 <= len(finished) < N_FINETUNE, finished
    # PreCog runs beside the sweep, in the driver (dead now): done at the kill or not at all
    precog_done = any((results / "_done").glob("precog-*.json"))
    # after the kill: what was done, and the trials started but not finished
    stopped = _status(runs, study_file, results)["finetune"]
    assert stopped["done"] >= len(finished)
    assert stopped["done"] + stopped["started"] + stopped["pending"] == N_FINETUNE

    # The same study again, to completion, while the killed Ray winds down.
    code = _wait(runs.study(study_file, results, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    rerun_log = (tmp_path / "rerun.log").read_text(errors="replace")
    assert code == 0, rerun_log[-4000:]
    # The killed driver's workers are in process groups of their own and outlive it for a
    # moment: one mid-trial may still finish (its tables land whole or not at all), so
    # the rerun finds at least the trials that were done at the kill, never all of them.
    done_at_rerun = re.search(rf"\[finetune\] {N_FINETUNE} trials: (\d+) already done", rerun_log)
    assert done_at_rerun, rerun_log[-4000:]
    assert len(finished) <= int(done_at_rerun.group(1)) < N_FINETUNE, done_at_rerun.group(0)
    precog = f"[precog] tweet_sentiment / {study['models'][0]}:"
    if precog_done:
        assert f"{precog} already done" in rerun_log, rerun_log[-4000:]
    else:
        assert f"{precog} scoring" in rerun_log and f"{precog} already done" not in rerun_log, rerun_log[-4000:]
    assert len(_finetune_markers(results)) == N_FINETUNE

    # Nothing of the killed driver's Ray is left: the raylet and GCS die with the driver
    # (Ray binds them to it), the workers with the raylet. A worker that was still
    # starting up can take a while to notice, so allow up to a minute after the kill.
    def left():  # the snapshot, and anything started in the driver's session since
        return [p for p in ray_procs if _alive(p)] + _session(first.pid)
    while left() and time.time() < killed_at + 60:
        time.sleep(0.5)
    assert not left(), f"processes of the killed driver's Ray still running: {left()}"

    db = results / "raymem.duckdb"
    _assert_complete(db)
    assert_same_database(db, reference(), VOLATILE)


# -- a2. Ctrl-C or SIGTERM stops the whole study ---------------------------------------
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_stops_the_whole_study(runs, study_file, reference, tmp_path, how):
    results, log = tmp_path / "results", tmp_path / "first.log"
    first = _start_until_a_trial_finished(runs, study_file, results, log)
    if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
        os.killpg(first.pid, signal.SIGINT)
    else:  # a job manager or `kill` signals the driver alone
        os.kill(first.pid, signal.SIGTERM)
    try:
        code = first.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the study went on after {how}:\n{_tail(log)}")
    text = log.read_text(errors="replace")
    assert code == 130, text[-4000:]
    stop = text.rindex("stopped (")
    assert text[stop:].startswith(f"stopped ({'SIGINT' if how == 'ctrl-c' else 'SIGTERM'})"), text[stop:]
    assert f"raymem study {study_file} --results {results}" in text[stop:], text[stop:]
    assert "Tuner.restore" not in text
    # no stage ran after the stop, and nothing was ingested from a part of the study
    assert "[ingest]" not in text and not (results / "raymem.duckdb").exists()
    finished = _finetune_markers(results)
    assert 1 <= len(finished) < N_FINETUNE, finished
    # nothing half-written: no temp files, and every finished trial has its shards
    assert not [p for p in results.rglob("*.tmp-*")]
    for trial_id in finished:
        assert (results / "predictions" / "finetune" / f"{trial_id}.parquet").is_file()
    if how == "sigterm":
        return
    # the same command goes on from there and ends where an uninterrupted run ends
    code = _wait(runs.study(study_file, results, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    rerun_log = (tmp_path / "rerun.log").read_text(errors="replace")
    assert code == 0, rerun_log[-4000:]
    assert f"[finetune] {N_FINETUNE} trials: {len(finished)} already done" in rerun_log
    db = results / "raymem.duckdb"
    _assert_complete(db)
    assert_same_database(db, reference(), VOLATILE)


# -- b. workers are lost --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(runs, tmp_path):
    """A Ray head of this test's own (session, temp dir; token auth off on 127.0.0.1)."""
    port = _free_port()
    # Its trials wait after each kept epoch in a hold folder until the test lets them go
    # (raymem.runtime.Runtime.hold_for_tests): the test kills a worker at a known epoch
    # however fast the epochs run (0.1-0.5 s here; polling for them, it once caught none).
    hold = tmp_path / "hold"
    hold.mkdir()
    env = runs.env("head", RAY_AUTH_MODE="disabled", **{HOLD_DIR: str(hold)})
    log = tmp_path / "ray-start.log"
    start = runs.start([BIN / "ray", "start", "--head", f"--port={port}", "--num-cpus=2",
                        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={_free_port()}", "--disable-usage-stats"], log, env)
    try:
        assert start.wait(timeout=120) == 0, _tail(log)
        yield f"127.0.0.1:{port}", env, start.pid, hold
    finally:
        stop_session(start.pid)
        assert not _session(start.pid), "the test's Ray head is still running"


def _epochs_the_driver_saw(ray_tmp: Path) -> dict[str, int]:
    """raymem trial id -> the last epoch whose report Tune's driver has received, from its
    result files: it writes them as reports arrive into the Ray session's artifacts
    folder (and copies them to the study's results/tune only now and then)."""
    out = {}
    for path in ray_tmp.glob("ray/session_*/artifacts/*/*/driver_artifacts/*/result.json"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                report = json.loads(line)
            except ValueError:  # a line being written
                continue
            if "epoch" in report:
                trial_id = report["config"]["trial"]["trial_id"]
                out[trial_id] = max(out.get(trial_id, 0), report["epoch"])
    return out


def test_lost_workers_are_retried(runs, ray_head, tiny_mlm, reference, tmp_path):
    address, env, head_sid, hold = ray_head
    results, log = tmp_path / "results", tmp_path / "study.log"
    study = _write(tmp_path / "study.yaml", _study(tiny_mlm, ray={"address": address}))
    epochs = yaml.safe_load(study.read_text())["finetune"]["epochs"]
    proc = runs.study(study, results, log, env)
    killed: dict[str, int] = {}  # raymem trial id -> pid of its lost worker
    lost_after: dict[str, int] = {}  # raymem trial id -> the last epoch it kept before
    deadline = time.time() + STUDY_TIMEOUT
    while proc.poll() is None and time.time() < deadline:
        # Trials hold after each kept epoch. Kill the workers of the first two trials held
        # after a kept epoch before the last (training lost half-way; after the last only
        # the predictions would be), each once (max_failures 2), once Tune's driver has
        # that epoch's report (it says how many reports a lost worker made); let the
        # others go on.
        seen = _epochs_the_driver_saw(Path(env["RAY_TMPDIR"]))
        for path in hold.glob("*.json"):
            trial_id, held = path.stem, json.loads(path.read_text())
            if len(killed) < 2 and trial_id not in killed and held["epoch"] < epochs:
                if seen.get(trial_id, 0) < held["epoch"]:
                    continue  # held until the driver has the report
                stat = _stat(held["pid"])
                assert stat is not None and stat["session"] == head_sid  # never signal another's
                os.kill(held["pid"], signal.SIGKILL)
                # (one read per check: the process may be reaped between two)
                while (stat := _stat(held["pid"])) is not None and stat["state"] not in "ZX":
                    time.sleep(0.01)
                killed[trial_id] = held["pid"]
                # the dead worker's last checkpoint, on disk: the epoch its retry must go on from
                lost_after[trial_id] = _progress_epoch(results, trial_id)
                assert lost_after[trial_id] == held["epoch"]
            path.unlink()
        time.sleep(0.05)
    code = _wait(proc, log)
    text = log.read_text(errors="replace")
    assert len(killed) == 2, f"two trial workers should have been lost mid-training:\n{text[-4000:]}"
    assert code == 0, text[-4000:]
    # Tune saw the lost workers and retried them: Ray's own lines, in the study's Ray log
    ray_log = "".join(p.read_text(errors="replace") for p in (results / "logs").glob("*.log"))
    assert ray_log.count("ActorDiedError") >= len(killed)
    # the study said so, in its own words: lost after an epoch or more
    assert len(re.findall(r"its worker was lost after [1-9]\d* reports", text)) >= len(killed)
    db = results / "raymem.duckdb"
    _assert_complete(db)
    # each lost trial started again at the epoch after its last checkpoint, trained only the
    # epochs left, and kept no progress checkpoint once finished
    resumed = {r[0]: r[1:] for r in fetch(db, "SELECT trial_id, resumed_from_epoch, epochs_trained, attempts "
                                              "FROM runs WHERE stage = 'finetune'")}
    for trial_id, epoch in lost_after.items():
        assert 1 <= epoch < epochs
        assert resumed[trial_id] == (epoch + 1, epochs - epoch, 2), (trial_id, epoch, resumed[trial_id])
    for trial_id in set(resumed) - set(lost_after):
        assert resumed[trial_id] == (None, epochs, 1)
    assert not list((results / "checkpoints").glob("*/progress.pt"))
    assert_same_database(db, reference(), VOLATILE)


def _progress_epoch(results: Path, trial_id: str) -> int | None:
    """The epoch of a trial's progress checkpoint, None if it has none (yet, or any more)."""
    import torch

    try:
        saved = torch.load(results / "checkpoints" / trial_id / "progress.pt", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return saved["epoch"]


# -- c. a trial fails for a real reason -----------------------------------------------
def test_failing_trial_is_recorded_and_the_rest_finish(runs, tiny_mlm, tmp_path):
    # A second model whose weights file was cut short (an interrupted copy). Planning
    # loads a model's config and tokenizer, not its weights (that is a trial's work), so
    # the study plans; the trials of that model fail inside Ray as they load it.
    broken = tmp_path / "broken_mlm"
    shutil.copytree(tiny_mlm, broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    study = _write(tmp_path / "study.yaml", _study(
        tiny_mlm, study="failing", models=[str(tiny_mlm), str(broken)], seeds=[1],
        precog={"enabled": False},
        finetune={"variants": ["clean"], "epochs": 2, "lr": 1e-3, "batch_size": 16, "max_length": 48}))
    results, log = tmp_path / "results", tmp_path / "study.log"
    code = _wait(runs.study(study, results, log, options=("--verbose",)), log)
    text = log.read_text(errors="replace")
    assert code == 1, text[-4000:]
    # --verbose: Ray's own lines on the terminal, as Ray prints them, and no log file of them
    assert "INFO worker.py" in text and "Started a local Ray instance" in text, text[:3000]
    assert "Ray's own log" not in text and not (results / "logs").exists()

    db = results / "raymem.duckdb"
    rows = fetch(db, "SELECT model, trial_id, status, error FROM runs WHERE stage = 'finetune'")
    by_model = {r[0]: r[1:] for r in rows}
    assert sorted(by_model) == sorted([str(tiny_mlm), str(broken)])
    failed_id, status, error = by_model[str(broken)]
    ok_id, ok_status, ok_error = by_model[str(tiny_mlm)]
    assert (status, ok_status) == ("failed", "ok")
    assert "Traceback" in error and "SafetensorError" in error and ok_error is None
    assert "1 trial(s) failed" in text and f"{failed_id} finetune tweet_sentiment {broken} seed=1 variant=clean" in text
    assert ok_id not in text.split("trial(s) failed")[1]
    assert _finetune_markers(results) == {ok_id}  # no marker: a rerun tries the failed one again
    assert fetch(db, "SELECT DISTINCT trial_id FROM predictions") == [(ok_id,)]
    # an exception inside a trial is not retried: to Tune the trial ended normally
    assert "ActorDiedError" not in text and "its worker was lost" not in text


# -- text longer than the model's position embeddings --------------------------------
def test_text_longer_than_the_model_is_refused_at_planning_or_truncated(tiny_mlm, tmp_path):
    from raymem.config import load_study
    from raymem.errors import ConfigError
    from raymem.study import make_plan
    from raymem.sweep import run_trial

    max_positions = json.loads((Path(tiny_mlm) / "config.json").read_text())["max_position_embeddings"]
    words = ["good", "film", "plot", "actor", "scene", "music", "story", "ending"]
    short = [f"{a} {b} {c}" for a in words for b in words[:3] for c in ("!", "?", ".")]
    train = [*short[:20], " ".join(words * max_positions)]  # far beyond the positions
    for split, texts in (("train", train), ("test", short[20:28])):
        rows = [f"{t},{'negative' if i % 2 else 'positive'}" for i, t in enumerate(texts)]
        (tmp_path / f"{split}.csv").write_text("\n".join(["text,label", *rows]) + "\n")
    task = {"name": "long_texts", "text_fields": ["text"], "label_field": "label",
            "label_names": ["negative", "positive"],
            "files": {s: str(tmp_path / f"{s}.csv") for s in ("train", "test")}}
    study = load_study(_write(tmp_path / "study.yaml", {
        "study": "long", "results": str(tmp_path / "results"), "models": [str(tiny_mlm)],
        "tasks": [task], "seeds": [1], "precog": {"enabled": False},
        "finetune": {"variants": ["clean"], "epochs": 1, "lr": 1e-3, "batch_size": 16}}))
    try:
        plan = make_plan(study, log=lambda *_: None)
    except ConfigError:
        return  # refused while planning: fine
    # Otherwise the one trial must train (on truncated text). Run it here, without Ray.
    (examples_trial,) = plan.of_stage("examples")
    key = (examples_trial.params["task"], examples_trial.params["model"])
    plan.store.write_rows("examples", "examples", examples_trial.trial_id, plan.examples[key], study.study)
    result = run_trial(plan.of_stage("finetune")[0])
    assert result["status"] == "ok", result.get("error")


# -- a local study on a machine where `ray start` recorded a cluster -------------------
def test_local_study_ignores_a_cluster_recorded_by_ray_start(runs, tiny_mlm, tmp_path):
    env = runs.env("recorded")
    recorded = Path(env["RAY_TMPDIR"]) / "ray"
    recorded.mkdir(exist_ok=True)
    (recorded / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")  # a head long gone
    study = _write(tmp_path / "study.yaml", _study(
        tiny_mlm, study="local", precog={"enabled": False}, finetune={"enabled": False}))
    log = tmp_path / "study.log"
    code = _wait(runs.study(study, tmp_path / "results", log, env), log, timeout=180)
    assert code == 0, _tail(log)
