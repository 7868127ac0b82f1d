"""Running trials: one trial in this process, or many as a Ray Tune sweep.

A finished trial leaves a completion marker, so a rerun of the study skips it. Failures
come in three kinds (as datatrove sorts them), each handled its own way:

- transient: a lost connection, a storage timeout or throttling, an interrupted upload:
  retried inside the trial with bounded exponential back-off; a lost worker or preempted
  node kills the trial from outside, and Tune restarts it (`max_failures`), from its last
  progress checkpoint;
- oom: out of memory: not retried (it would fail again); the error names what to lower;
- permanent: a bug or bad data: not retried. A CUDA error (a device-side assert) leaves
  the worker's CUDA context unusable: the worker is ended after the failure is recorded,
  and the next trial gets a new one;
- disk_full: the results store is full: nothing is retried, the study stops naming the
  store; what finished is kept (a trial keeps its progress checkpoint until its results
  are written), and the same command resumes once there is room.
A failure is recorded once in `runs` with its error and kind; the sweep goes on.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import polars as pl

from raymem.errors import StoreFull, is_disk_full
from raymem.runtime import Runtime
from raymem.store import ATTEMPTS, Store
from raymem.terminal import say, status
from raymem.trial import Trial

# stage -> the module whose run(trial, runtime) runs one of its trials
STAGE_MODULES = {
    "finetune": "raymem.stages.finetune",
    "counterfactual": "raymem.stages.counterfactual",
    "control": "raymem.stages.control",
    "localise": "raymem.stages.localise",
    "hidden": "raymem.stages.hidden",
    "neurons": "raymem.stages.neurons",
}
TRANSIENT_RETRIES = 3
BACKOFF_SECONDS, BACKOFF_CAP_SECONDS = 2.0, 30.0
TRANSIENT_NAMES = {"RayActorError", "ActorDiedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
                   "WorkerCrashedError", "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError",
                   "IncompleteReadError", "ResponseStreamingError"}
TRANSIENT_MESSAGE = re.compile(r"timed? ?out|throttl|slow ?down|too many requests|service unavailable|"
                               r"connection (reset|refused|aborted|closed)|temporarily unavailable|"
                               r"broken pipe|\b(429|500|502|503|504)\b", re.IGNORECASE)
DISK_FULL = "disk_full"
# Beside a trial's attempt counter: the Tune trial whose worker was ended after a CUDA
# error (its restart on a new worker reports the recorded failure instead of running again)
ENDED_WORKER = ".ended-worker"
OOM_HINT = ("out of memory: lower this stage's batch_size or max_length, or give each trial more of a "
            "GPU (a larger `gpus` fraction, so fewer trials share one)")


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the whole study stops; finished trials stay finished."""
    received: str | None = None  # the signal's name (Tune may re-raise a bare KeyboardInterrupt)


def error_kind(exc: BaseException) -> str:
    """'transient', 'oom', 'permanent' or 'disk_full' (see the module docstring)."""
    import torch

    if is_disk_full(exc):
        return DISK_FULL
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
            isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return "oom"
    if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in TRANSIENT_NAMES:
        return "transient"
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                        NotADirectoryError)):
        return "permanent"  # whatever its path says (".../timeout.yaml", "/data/run-429")
    if isinstance(exc, OSError) and TRANSIENT_MESSAGE.search(exc.strerror or str(exc)):
        return "transient"
    return "permanent"


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """A CUDA error after which the process's CUDA context fails every later call (a
    device-side assert, an illegal memory access): torch's AcceleratorError, or a
    RuntimeError saying 'CUDA error'. Out of memory is not one: the context survives it."""
    if error_kind(exc) == "oom":
        return False
    return type(exc).__name__ == "AcceleratorError" or (
        isinstance(exc, RuntimeError) and "CUDA error" in str(exc))


def storage_full(store: Store, exc: BaseException) -> StoreFull:
    """The one message a full store gets."""
    return StoreFull(f"disk full: the results store {store.uri} has no room left ({exc}); the study "
                     f"stopped. What finished is kept: free space (or give `results:` a larger "
                     f"disk) and run the same command to resume")


def record_run(store: Store, trial: Trial, status: str, wall: float, info: dict | None = None,
               error: str | None = None, kind: str | None = None, attempts: int = 1) -> dict[str, int]:
    """One row in `runs` for the trial: parameters, status, wall time and what it reported;
    returns its shard (Store.write_rows)."""
    p, info = trial.params, info or {}
    row = {"task": p.get("task"), "model": p.get("model"), "seed": p.get("seed"),
           "variant": p.get("variant"), "status": status, "error": error, "error_kind": kind,
           "wall_seconds": round(wall, 3), "device": info.get("device", "cpu"),
           "precision": info.get("precision", "fp32"), "attempts": attempts,
           "resumed_from_epoch": info.get("resumed_from_epoch"), "epochs_trained": info.get("epochs_trained"),
           "storage_bytes": info.get("storage_bytes", 0),
           "memorised_epoch": info.get("memorised_epoch"), "peak_gpu_bytes": info.get("peak_gpu_bytes"),
           "params": json.dumps(p, sort_keys=True, default=str)}
    schema = {"seed": pl.Int64, "memorised_epoch": pl.Int64, "error": pl.Utf8, "error_kind": pl.Utf8,
              "task": pl.Utf8, "model": pl.Utf8, "variant": pl.Utf8, "storage_bytes": pl.Int64,
              "attempts": pl.Int64, "resumed_from_epoch": pl.Int64, "epochs_trained": pl.Int64,
              "peak_gpu_bytes": pl.Int64}
    return store.write_rows("runs", trial.stage, trial.trial_id, pl.DataFrame([row], schema_overrides=schema),
                            trial.study)


def _count_attempt(store: Store, trial: Trial) -> int:
    """How many times this trial was started (Tune restarts and study reruns included)."""
    parts = (ATTEMPTS, trial.trial_id)
    attempts = int(store.get_bytes(*parts)) + 1 if store.exists(*parts) else 1
    store.put_bytes(str(attempts).encode(), *parts)
    return attempts


def write_tables(store: Store, trial: Trial, tables: dict[str, pl.DataFrame]) -> dict[str, int]:
    """All of a trial's shards or none: a failure half-way removes those already written.
    Returns the shards written, for the trial's marker."""
    written, shards = [], {}
    try:
        for table, rows in tables.items():
            shards |= store.write_rows(table, trial.stage, trial.trial_id, rows, trial.study)
            written.append(table)
        return shards
    except BaseException:
        for table in written:
            store.delete(table, trial.stage, f"{trial.trial_id}.parquet")
        raise


def run_trial(trial: Trial, report=None, sleep=time.sleep) -> dict:
    """Run one trial in this process; write its tables, record it; never raise for a failure
    inside it (a lost worker is not an exception here: the process is gone).

    Writes go in the order that loses nothing finished: tables, runs row, marker, and only
    then the progress checkpoint is deleted. A full store is recorded where it can be and
    returned as `disk_full`, never retried."""
    store = Store(trial.results)
    stage = importlib.import_module(STAGE_MODULES[trial.stage])
    start, runtime, attempts, retry = time.time(), None, 1, 0
    try:
        attempts = _count_attempt(store, trial)
        for retry in range(TRANSIENT_RETRIES + 1):
            try:
                runtime = Runtime.for_trial(trial, report)
                shards = write_tables(store, trial, stage.run(trial, runtime))
                break
            except Exception as exc:
                kind = error_kind(exc)
                if kind == DISK_FULL:
                    raise
                if kind == "transient" and retry < TRANSIENT_RETRIES:
                    delay = min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2 ** retry)
                    print(f"[{trial.stage}] {trial.trial_id}: transient error ({exc}); retry "
                          f"{retry + 1}/{TRANSIENT_RETRIES} in {delay:.0f}s", flush=True)
                    sleep(delay)
                    continue
                error = traceback.format_exc(limit=8)
                if kind == "oom":
                    error = f"{OOM_HINT}\n{error}"
                ended = is_sticky_cuda_error(exc)
                if ended:
                    error = f"{CUDA_ERROR_NOTE}\n{error}"
                record_run(store, trial, "failed", time.time() - start, _with_peak_memory(runtime),
                           error, kind, attempts + retry)
                return {"status": "failed", "error_kind": kind, "error": error.strip().splitlines()[-1],
                        **({"end_worker": True} if ended else {})}
        shards |= record_run(store, trial, "ok", time.time() - start, _with_peak_memory(runtime),
                             attempts=attempts + retry)
        store.mark_done(trial.trial_id, {"stage": trial.stage, "params": trial.params}, shards)
        runtime.discard_progress()
        return {"status": "ok", **runtime.info}
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        full = storage_full(store, exc)
        try:  # a failure row is small: it may still fit
            record_run(store, trial, "failed", time.time() - start, runtime.info if runtime else None,
                       str(full), DISK_FULL, attempts + retry)
        except Exception as again:
            if not is_disk_full(again):
                raise
        return {"status": "failed", "error_kind": DISK_FULL, "error": str(full)}
    finally:
        free_device_memory()


CUDA_ERROR_NOTE = ("a CUDA error: the worker's CUDA context is unusable after it, so the worker was "
                   "ended and the next trial runs in a new one")


def _with_peak_memory(runtime: Runtime | None) -> dict | None:
    """The runtime's info, with the GPU memory the trial held at its peak (on a GPU)."""
    import torch

    if runtime is None:
        return None
    if runtime.device.type == "cuda" and torch.cuda.is_initialized():
        runtime.info["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(runtime.device)
    return runtime.info


def free_device_memory() -> None:
    """Between two trials of a reused worker: the last trial's tensors and the GPU memory
    torch's caching allocator kept for them go back, and the peak counts from zero again,
    so the next trial starts with the memory of a new worker."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _tune_entry(config: dict) -> None:
    from ray import tune

    trial = Trial.from_config(config["trial"]["spec"])
    store, tune_trial = Store(trial.results), tune.get_context().get_trial_id()
    ended = (ATTEMPTS, f"{trial.trial_id}{ENDED_WORKER}")
    if store.exists(*ended) and store.get_bytes(*ended).decode() == tune_trial:
        # this trial ended its last worker after a CUDA error; its failure is recorded
        tune.report({"done": True, "status": "failed", "error_kind": "permanent", "error": CUDA_ERROR_NOTE})
        return
    result = run_trial(trial, report=lambda **metrics: tune.report(metrics))
    summary = {k: v for k, v in result.items() if k in ("status", "error", "error_kind")}
    if result.get("end_worker"):
        # Tune reuses a worker whose trial ended; one that raises is replaced instead, and
        # the trial's restart (a new worker) finds this note and reports the failure above
        store.put_bytes(tune_trial.encode(), *ended)
        tune.report({**summary, "end_worker": True})
        raise WorkerEnded(f"{trial.label()}: {CUDA_ERROR_NOTE}")
    tune.report({"done": True, **summary})


class WorkerEnded(RuntimeError):
    """Raised by a Tune trial whose worker must not serve another trial (its CUDA context is lost)."""


@contextmanager
def interruptible():
    """Ctrl-C and SIGTERM raise StudyInterrupted in the driver, wherever it is (a Tune sweep,
    a Ray Data job), instead of ending only the current sweep (Tune's own handler) or exiting
    without a word (Ray's SIGTERM handler)."""
    def stop(signum, frame):
        StudyInterrupted.received = signal.Signals(signum).name
        raise StudyInterrupted(StudyInterrupted.received)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class Work:
    """What a sweep's progress line estimates the time left from: when the sweep `started`,
    the relative cost (raymem/schedule.py) of each trial the sweep runs in Tune, the stage of
    each (`stages`), and those its earlier experiments ended (`ended_before`)."""
    started: float
    costs: dict[str, float]
    stages: dict[str, str] = field(default_factory=dict)
    ended_before: frozenset[str] = frozenset()


def _trial_id(tune_trial) -> str | None:
    """The raymem trial id of a Tune trial (None for a search candidate)."""
    return tune_trial.config.get("trial", {}).get("trial_id")


def _failed(tune_trial) -> bool:
    """A Tune trial that ended in an error, or whose raymem trial reported its failure."""
    return tune_trial.status == "ERROR" or (tune_trial.last_result or {}).get("status") == "failed"


def _label(tune_trial) -> str:
    """A raymem trial's label, or Tune's own name for a trial that is not one (a search candidate)."""
    return tune_trial.config.get("trial", {}).get("label", str(tune_trial))


def progress_callback(name: str, total: int, every_seconds: float = 10.0, before: tuple[int, int] = (0, 0),
                      work: Work | None = None):
    """A Tune callback printing one progress line for the whole sweep (instead of Tune's
    per-trial configuration dumps): done, failed, running and pending, the time left, and
    per stage the trials ended of its total (a bar rewritten in place on a terminal:
    raymem.terminal.status).
    `before`: the sweep's trials done and failed in its earlier experiments. With `work`, the
    time left is the time so far times the work left over the work ended, not the trials:
    a sweep runs its longest trials first. It prints rather than holding a log function:
    Tune pickles its callbacks."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.start, self.last = work.started if work else time.time(), 0.0
            # a bar in place is cheap to redraw: each second on a terminal
            self.every = min(every_seconds, 1.0) if sys.stdout.isatty() else every_seconds
            self.closed = False  # the line of the last trial was printed

        def _time_left(self, ended: list, left: int, now: float) -> float | None:
            if not ended or not left:
                return None
            if work is None:
                return (now - self.start) / len(ended) * left
            scale = self._stage_scales(ended)
            weighed = {i: c * scale.get(work.stages.get(i), 1.0) for i, c in work.costs.items()}
            ended_ids = self._ended_ids(ended)
            spent = sum(weighed.get(i, 0.0) for i in ended_ids)
            left_work = sum(c for i, c in weighed.items() if i not in ended_ids)
            return (now - self.start) * left_work / spent if spent else None

        def _ended_ids(self, ended: list) -> set:
            """The raymem ids of the sweep's ended trials, this experiment's and earlier ones'."""
            return {_trial_id(t) for t in ended} | work.ended_before

        def _stage_scales(self, ended: list) -> dict[str, float]:
            """Per stage with ended trials, its measured seconds per unit of relative cost over
            the sweep's (Tune's `time_total_s`): a stage the relative costs misjudge (neuron
            trials, a model much larger than the studies') is weighed by what its trials took
            once one has ended. 1 for the others."""
            seconds, costs = {}, {}
            for t in ended:
                if _failed(t):
                    continue  # a trial that failed early says nothing of what its stage takes
                trial_id, took = _trial_id(t), (t.last_result or {}).get("time_total_s")
                stage, cost = work.stages.get(trial_id), work.costs.get(trial_id, 0.0)
                if stage is None or not took or not cost:
                    continue
                seconds[stage] = seconds.get(stage, 0.0) + took
                costs[stage] = costs.get(stage, 0.0) + cost
            if not seconds:
                return {}
            overall = sum(seconds.values()) / sum(costs.values())
            return {stage: seconds[stage] / costs[stage] / overall for stage in seconds}

        def _line(self, trials, completed=None) -> None:
            # Tune calls back before it marks the completed trial TERMINATED: count it here
            ended = [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is completed]
            now = time.time()
            if self.closed or (len(ended) + sum(before) < total and now - self.last < self.every):
                return
            self.last = now
            failed = sum(map(_failed, ended))
            running = sum(t.status == "RUNNING" and t is not completed for t in trials)
            left = total - len(ended) - sum(before)
            eta = self._time_left(ended, left, now)
            done, failed = len(ended) - failed + before[0], failed + before[1]
            status(f"[{name}] {done}/{total} done, {failed} failed, {running} running, "
                   f"{left - running} pending; {now - self.start:.0f}s so far"
                   + (f", about {eta:.0f}s left" if eta is not None else "") + self._stages(ended),
                   (done + failed) / total if total else 1.0, final=left == 0)
            self.closed = left == 0

        def _stages(self, ended: list) -> str:
            """' (finetune 2/4, localise 0/6)': per stage, its trials ended of its total."""
            if work is None or len(set(work.stages.values())) < 2:
                return ""
            ended_ids = self._ended_ids(ended)
            counts = {}
            for trial_id, stage in work.stages.items():
                n = counts.setdefault(stage, [0, 0])
                n[0] += trial_id in ended_ids
                n[1] += 1
            return " (" + ", ".join(f"{stage} {n}/{of}" for stage, (n, of) in counts.items()) + ")"

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trials, completed=trial)

        def on_step_end(self, iteration, trials, **info):
            if sys.stdout.isatty():  # the bar and its time so far move between completions
                self._line(trials)

        def on_trial_recover(self, iteration, trials, trial, **info):
            # an exception inside a trial is recorded by run_trial; this is a lost worker or node,
            # or a worker ended after a CUDA error (its restart reports the recorded failure)
            if (trial.last_result or {}).get("end_worker"):
                say(f"[{name}] {_label(trial)}: failed ({CUDA_ERROR_NOTE})", flush=True)
                return
            reports = (trial.last_result or {}).get("training_iteration", 0)
            say(f"[{name}] {_label(trial)}: its worker was lost after {reports} reports; "
                f"retrying from its last progress checkpoint", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            if (trial.last_result or {}).get("end_worker"):
                say(f"[{name}] {_label(trial)}: failed ({CUDA_ERROR_NOTE})", flush=True)
            else:
                say(f"[{name}] {_label(trial)}: lost its worker more than "
                    f"finetune.max_failures times; it failed", flush=True)
            self._line(trials, completed=trial)

    return Progress()


def tune_callbacks(name: str, total: int, before: tuple[int, int] = (0, 0), work: Work | None = None) -> list:
    """What every raymem Tune experiment logs: Tune's JSON and CSV results, one progress line.

    Tune's default TensorBoard logger keeps every trial's writer until the driver exits
    (memory grows per trial), so it is turned off; Ctrl-C stops the whole study
    (`interruptible`), not only this experiment."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    return [JsonLoggerCallback(), CSVLoggerCallback(), progress_callback(name, total, before=before, work=work)]


def trial_resources(config: dict):
    """A Tune trial's placement: the CPUs and GPUs its raymem trial asks for."""
    from ray.tune import PlacementGroupFactory

    runtime = config["trial"]["spec"]["runtime"]
    return PlacementGroupFactory([{"CPU": runtime.get("cpus", 1), "GPU": runtime.get("gpus", 0)}])


# Tune keeps each trial's state (60-150 KiB measured) until its experiment ends: a long study
# runs as a series of experiments of at most this many trials, so the driver's memory stays
# flat (benchmarks/tune_overhead.py). Between two experiments, the last trials of the first
# finish before the next starts: a tail of about one trial's length per 2,000 trials.
TRIALS_PER_EXPERIMENT = 2000


def run_sweep(name: str, trials: list[Trial], store: Store, max_failures: int, log=print,
              run_in_driver: Callable[[Trial], bool] | None = None,
              per_experiment: int = TRIALS_PER_EXPERIMENT, trackers=None) -> list[Trial]:
    """Run the unfinished trials, of any stages, as one flowing sweep: each starts as soon
    as the trials it needs are done, longest chain first (raymem/schedule.py); driver steps
    among them go to `run_in_driver`; each Tune trial is logged to the study's `trackers`
    (raymem/trackers.py). Return the trials that failed or never could start."""
    from raymem.schedule import DRIVER_STAGES, relative_cost

    done = store.done_ids()
    pending = [t for t in trials if t.trial_id not in done]
    for stage in dict.fromkeys(t.stage for t in trials):
        mine = [t for t in trials if t.stage == stage]
        left = sum(t.stage == stage for t in pending)
        where = ("in the driver" if stage in DRIVER_STAGES else
                 f"{mine[0].runtime.get('cpus', 1):g} CPU, {mine[0].runtime.get('gpus', 0):g} GPU each")
        log(f"[{stage}] {len(mine)} trials: {len(mine) - left} already done, {left} to run ({where})")
    if not pending:
        return []
    n_tune = sum(t.stage not in DRIVER_STAGES for t in pending)
    costs = {t.trial_id: relative_cost(t) for t in pending if t.stage not in DRIVER_STAGES}
    stages = {t.trial_id: t.stage for t in pending if t.stage not in DRIVER_STAGES}
    start, failed_ids, part = time.time(), set(), 0
    while True:
        # a trial that failed in an earlier experiment stays failed: it is left out, so the
        # trials that need it are never released
        ended = done | failed_ids
        work = Work(start, costs, stages, frozenset(ended & set(costs)))
        searcher = _run_experiment(name, part, [t for t in trials if t.trial_id not in failed_ids], store,
                                   max_failures, run_in_driver, per_experiment, n_tune, len(failed_ids), work,
                                   trackers)
        done = store.done_ids()
        failed_ids |= searcher.failed
        return_freed_memory()
        if not searcher.capped:
            break
        part += 1
    failed = [t for t in pending if t.trial_id not in done]
    blocked = [t for t in searcher.blocked if t.trial_id not in done]
    log(f"[{name}] {len(pending) - len(failed)} trials done, {len(failed) - len(blocked)} failed"
        + (f", {len(blocked)} not started (a trial they need failed)" if blocked else "")
        + f", in {time.time() - start:.0f}s")
    return failed


def return_freed_memory() -> None:
    """Hand the heap that an ended Tune experiment freed back to the OS (glibc's malloc_trim).
    glibc keeps freed memory for reuse, fragmented, so the driver's RSS crept up with every
    experiment; trimmed, it levels off (benchmarks/tune_overhead.py). Elsewhere, nothing."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the C library this process runs on
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        pass


def _run_experiment(name: str, part: int, trials: list[Trial], store: Store, max_failures: int,
                    run_in_driver, limit: int, n_tune: int, failed_before: int, work: Work, trackers=None):
    """One Tune experiment releasing at most `limit` trials; returns its searcher."""
    import ray
    from ray import tune

    from raymem.schedule import DRIVER_STAGES, ReadyFirst
    from raymem.trackers import tracker_callbacks

    done = store.done_ids()
    searcher = ReadyFirst(trials, done, run_in_driver or (lambda trial: False), limit)
    # Tune holds back new trials while this many wait for resources: enough to keep every
    # CPU busy (and an autoscaler asking for nodes), few enough that the order holds.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(2, int(ray.cluster_resources().get("CPU", 2)))))
    left = sum(t.trial_id not in done and t.stage not in DRIVER_STAGES for t in trials)
    tuner = tune.Tuner(
        tune.with_resources(_tune_entry, trial_resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            # one more than it will hand out: the searcher, not the count, ends the experiment,
            # so driver steps ready after the last trial still run
            num_samples=min(limit, n_tune) + 1,
            # One worker process serves trial after trial: no re-import of torch per trial.
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{trials[0].study}-{name}" + (f"-{part + 1}" if part else ""),
            storage_path=store.local_path("tune"),
            # Tune's own output prints every trial's configuration; one progress line instead
            failure_config=tune.FailureConfig(max_failures=max_failures), verbose=0,
            stop=stop_when_full(),
            callbacks=tune_callbacks(name, n_tune, (n_tune - left - failed_before, failed_before), work)
            + (tracker_callbacks(trackers, trials[0].study) if trackers is not None else [])))
    try:
        grid = tuner.fit()
    except Exception as exc:  # a driver step (a summary) found the store full
        if is_disk_full(exc):
            raise storage_full(store, exc) from exc
        raise
    for result in grid:
        if (result.metrics or {}).get("error_kind") == DISK_FULL:
            raise StoreFull(result.metrics["error"])
    return searcher


def stop_when_full():
    """A Tune stopper: the whole experiment ends once a trial reports a full store (every
    other trial would fail the same way)."""
    from ray.tune.stopper import Stopper

    class Full(Stopper):
        def __init__(self):
            self.full = False

        def __call__(self, trial_id, result) -> bool:
            self.full = self.full or result.get("error_kind") == DISK_FULL
            return False

        def stop_all(self) -> bool:
            return self.full

    return Full()

