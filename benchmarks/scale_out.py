"""Scale-out of raymem's sweep on a local autoscaling Ray (raymem.localcluster, Ray's fake
multi-node provider): trials per minute with 1, 2 and 4 simulated worker nodes, and how
the driver's memory grows with the number of trials.

For each node count n, a fresh cluster: a head with 1 CPU and no GPU, and n worker nodes
of type {CPU: 1, GPU: 1} (min_workers = max_workers = n, all up before any timing).
Every trial asks for 1 CPU and 1 GPU, so trials run on worker nodes only, one per node
at a time. The same trials run at every n, through `raymem.sweep.run_sweep` (Tune,
reuse_actors) from this process:

    sleep:     trials whose body sleeps --sleep-seconds: scheduling alone; the ideal is
               n x 60 / seconds trials per minute. run_sweep's trial body
               (`raymem.sweep._tune_entry`) is swapped for the sleep, from outside raymem.
    finetune:  real raymem fine-tuning trials (raymem-mini, tweet_sentiment, 1 CPU each).
               Every simulated node shares this machine's cores: on 2 cores they cannot
               go much beyond 2x, whatever n.

Driver memory: on the largest cluster, after a warm-up sweep, sweeps of --memory-trials
(10 40 160 640) sleep-0 trials. This process's RSS (/proc/self/status) is read before each
sweep, sampled every 0.1 s during it and read after it, also after glibc's malloc_trim
(RSS counts freed memory the allocator keeps for reuse, which is no leak); the Python
objects alive (gc) and the files open are counted before and after. Reported per sweep,
and per trial as least-squares slopes over the sweep sizes (flat = about 0). Twice:
run_sweep as it is (Tune's JSON and CSV result loggers), and with Tune's default
TensorBoard logger back (see with_tensorboard), which made the driver grow per trial.

Wall = run_sweep's wall, from the call to its return (Tune's start included: about 2 s a
sweep). Medians over --repeats. Prints markdown tables and writes
benchmarks/out/scale_out.json (--memory-only: scale_out_memory.json). About 8-10
minutes with the defaults on 2 cores.

Usage: .venv/bin/python benchmarks/scale_out.py [--nodes 1 2 4] [--repeats 1]
           [--sleep-trials 16] [--sleep-seconds 2] [--finetune-trials 8] [--train 120]
           [--epochs 4] [--memory-trials 10 40 160 640] [--memory-only]
e.g. a longer memory run: benchmarks/scale_out.py --memory-only --memory-trials 40 160 640 2560
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

# before ray is imported: the cluster listens on 127.0.0.1 only (see raymem.localcluster)
from raymem.localcluster import CLIENT_ENV, LocalCluster

os.environ.update(CLIENT_ENV)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ray  # noqa: E402

from raymem.config import Study  # noqa: E402
from raymem.store import Store  # noqa: E402
from raymem.study import make_plan  # noqa: E402
from raymem.sweep import run_sweep  # noqa: E402
from raymem.trial import Trial  # noqa: E402
from sweep_harness import rss, run_sampling_rss, trial_body  # noqa: E402  (benchmarks/, beside this script)

OUT = Path(__file__).parent / "out" / "scale_out.json"
TRIAL = {"cpus": 1, "gpus": 1}  # each trial's runtime: one of a node's fake GPUs
QUIET = dict(log=lambda *_: None)


@contextlib.contextmanager
def tune_quiet():
    """Tune's progress tables (run_sweep asks for verbose=1) away from this report."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


# -- trials ---------------------------------------------------------------------------
def _sleep_entry(config: dict) -> None:
    """Stands in for raymem.sweep._tune_entry: sleep, mark the trial done, report."""
    import time

    from ray import tune

    from raymem.store import Store

    trial = Trial.from_config(config["trial"]["spec"])  # as run_sweep hands it
    time.sleep(trial.params["seconds"])
    Store(trial.results).mark_done(trial.trial_id, trial.params)
    tune.report({"done": True, "status": "ok"})


@contextlib.contextmanager
def with_tensorboard():
    """run_sweep with Tune's default loggers back, TensorBoard's included (run_sweep turns
    it off). tensorboardX registers an atexit hook for every writer it opens, one per
    trial, so the driver keeps every trial's writer (its queue, thread, buffers)."""
    env = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0"  # run_sweep only sets a default
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = env


MEMORY_VARIANTS = {"run_sweep": contextlib.nullcontext,
                   "run_sweep + Tune's TensorBoard logger": with_tensorboard}


def sleep_sweep(root: Path, name: str, n: int, seconds: float) -> float:
    results = str(root / name)
    trials = [Trial("sleep", {"i": i, "seconds": seconds}, "scale_out", results, runtime=TRIAL) for i in range(n)]
    start = time.perf_counter()
    with trial_body(_sleep_entry), tune_quiet():
        failed = run_sweep("sleep", trials, Store(results), 0, **QUIET)
    wall = time.perf_counter() - start
    assert not failed, failed
    return wall


def finetune_plan(root: Path, name: str, n: int, train: int, epochs: int):
    """A fresh results folder with the examples written, and n fine-tuning trials."""
    seeds = list(range(1, (n + 1) // 2 + 1))
    plan = make_plan(Study.model_validate({
        "study": "scale_out", "results": str(root / name), "models": ["raymem-mini"],
        "tasks": ["tweet_sentiment"], "seeds": seeds, "subsample": {"train": train, "test": 100},
        "precog": {"enabled": False},
        # the nodes' GPUs are fake (a resource, no CUDA): a trial given one must run on the
        # CPU by name, since device auto takes an assigned GPU to mean CUDA
        "finetune": {"variants": ["clean", "noisy"], "epochs": epochs, "lr": 1e-3,
                     "batch_size": 16, "max_length": 64, "resources": {"device": "cpu", **TRIAL}}}), **QUIET)
    for trial in plan.of_stage("examples"):
        key = (trial.params["task"], trial.params["model"])
        plan.store.write_rows("examples", "examples", trial.trial_id, plan.examples[key], "scale_out")
        plan.store.mark_done(trial.trial_id, trial.params)
    plan.trials = plan.of_stage("finetune")[:n]  # the plan keeps only the trials to sweep
    return plan


def finetune_sweep(plan) -> tuple[float, float]:
    """Sweep wall, and the mean of the trials' own wall_seconds (timed inside them)."""
    start = time.perf_counter()
    with tune_quiet():
        failed = run_sweep("finetune", plan.trials, plan.store, 0, **QUIET)
    wall = time.perf_counter() - start
    assert not failed, failed
    runs = plan.store.read_table("runs").to_pydict()
    assert set(runs["status"]) == {"ok"}, runs["status"]
    return wall, statistics.mean(runs["wall_seconds"])


# -- driver memory --------------------------------------------------------------------
def trimmed_rss() -> int:
    """RSS once glibc has handed its free memory back (malloc_trim): what is still in use.
    Without it, RSS also counts freed memory the allocator keeps for reuse."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: plain RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss()


def measured(fn) -> dict:
    """fn(); this process's RSS before, at its peak during (sampled every 0.1 s), after,
    and after malloc_trim; the Python objects alive and the files open before and after;
    fn's wall time."""
    before, objects, fds = trimmed_rss(), len(gc.get_objects()), len(os.listdir("/proc/self/fd"))
    wall, peak = run_sampling_rss(fn)
    gc.collect()
    after = rss()
    return {"rss_before": before, "rss_peak": max(before, peak, after), "rss_after": after,
            "rss_after_trim": trimmed_rss(),
            "objects_before": objects, "objects_after": len(gc.get_objects()),
            "open_files_before": fds, "open_files_after": len(os.listdir("/proc/self/fd")),
            "wall_seconds": wall}


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs (None with fewer than two points)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def memory_summary(sweeps: list[dict]) -> dict:
    """Per trial, as slopes over the sweep sizes: how the peak RSS during a sweep, and the
    RSS, Python objects and open files left after it, grow with the sweep's size."""
    ks = [m["trials"] for m in sweeps]

    def per_trial(after: str, before: str) -> float | None:
        return slope(ks, [m[after] - m[before] for m in sweeps])
    return {"sweeps": sweeps,
            "peak_growth_bytes_per_trial": per_trial("rss_peak", "rss_before"),
            "kept_growth_bytes_per_trial": per_trial("rss_after", "rss_before"),
            "kept_in_use_bytes_per_trial": per_trial("rss_after_trim", "rss_before"),
            "kept_objects_per_trial": per_trial("objects_after", "objects_before"),
            "kept_open_files_per_trial": per_trial("open_files_after", "open_files_before")}


# -- one cluster per node count ---------------------------------------------------------
def cluster(n: int) -> LocalCluster:
    c = LocalCluster(head_cpus=1, head_gpus=0, idle_timeout_s=60, workers={
        "worker": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": n, "max_workers": n}})
    start = time.perf_counter()
    c.start()
    try:
        c.wait_for(lambda nodes: sum(x["type"] == "worker" for x in nodes) == n, 60 + 30 * n,
                   f"{n} worker nodes up")
    except BaseException:
        c.stop()
        raise
    print(f"[{n} nodes] cluster up in {time.perf_counter() - start:.1f}s", flush=True)
    return c


def throughput(n: int, args, root: Path, walls: dict, trial_seconds: dict) -> None:
    """The sleep and the fine-tuning sweeps on the cluster of n nodes, --repeats times."""
    for r in range(args.repeats):
        walls["sleep"][n].append(sleep_sweep(root, f"sleep-{n}-{r}", args.sleep_trials, args.sleep_seconds))
        plan = finetune_plan(root, f"finetune-{n}-{r}", args.finetune_trials, args.train, args.epochs)
        wall, inside = finetune_sweep(plan)
        walls["finetune"][n].append(wall)
        trial_seconds[n].append(inside)
        print(f"[{n} nodes] repeat {r + 1}: sleep {walls['sleep'][n][-1]:.1f}s, "
              f"finetune {wall:.1f}s (mean trial {inside:.1f}s)", flush=True)


def driver_memory(args, root: Path) -> dict[str, list[dict]]:
    """For each of MEMORY_VARIANTS, sweeps of --memory-trials sleep-0 trials, measured."""
    sleep_sweep(root, "memory-warmup", 5, 0)  # Tune's imports and first-use costs
    out = {}
    for variant, context in MEMORY_VARIANTS.items():
        out[variant] = []
        for i, k in enumerate(args.memory_trials):  # a sweep of its own each: no trial done before
            with context():
                m = {"trials": k, **measured(lambda: sleep_sweep(root, f"memory-{len(out)}-{i}-{k}", k, 0))}
            out[variant].append(m)
            print(f"[memory] {variant}: {k} trials in {m['wall_seconds']:.1f}s: RSS "
                  f"{m['rss_before'] / 2**20:.1f} -> peak {m['rss_peak'] / 2**20:.1f} -> "
                  f"{m['rss_after'] / 2**20:.1f} MiB; Python objects {m['objects_before']} -> "
                  f"{m['objects_after']}; open files {m['open_files_before']} -> {m['open_files_after']}",
                  flush=True)
    return out


def print_throughput(args, per_min: dict, speedup: dict, trial_seconds: dict) -> None:
    print(f"\nTrials per minute on a local autoscaling Ray, {os.cpu_count()} cores, median of "
          f"{args.repeats}; each trial 1 CPU + 1 (fake) GPU, one per worker node")
    print(f"sleep: {args.sleep_trials} trials of {args.sleep_seconds:g}s; finetune: {args.finetune_trials} "
          f"raymem-mini trials ({args.train} train / 100 test, {args.epochs} epochs)\n")
    print("| worker nodes | sleep trials/min | ideal | speedup | sleep sweep beyond ideal (s) "
          "| finetune trials/min | speedup | mean fine-tuning trial (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.nodes:
        ideal_wall = -(-args.sleep_trials // n) * args.sleep_seconds  # rounds of n trials
        print(f"| {n} | {per_min['sleep'][n]:.1f} | {n * 60 / args.sleep_seconds:.0f} "
              f"| {speedup['sleep'][n]:.2f}x | {args.sleep_trials * 60 / per_min['sleep'][n] - ideal_wall:.1f} "
              f"| {per_min['finetune'][n]:.1f} | {speedup['finetune'][n]:.2f}x | {trial_seconds[n]:.1f} |")


def print_memory(nodes: int, mem: dict) -> None:
    mib = 2 ** 20
    print(f"\nDriver memory ({nodes} worker nodes, sleep-0 trials; RSS in MiB, \"trimmed\": after "
          f"malloc_trim)\n")
    print("| sweep | trials | sweep (s) | RSS before (trimmed) | peak during | after | after, trimmed "
          "| Python objects kept | open files kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, summary in mem.items():
        for m in summary["sweeps"]:
            print(f"| {variant} | {m['trials']} | {m['wall_seconds']:.1f} | {m['rss_before'] / mib:.1f} "
                  f"| {m['rss_peak'] / mib:.1f} | {m['rss_after'] / mib:.1f} | {m['rss_after_trim'] / mib:.1f} "
                  f"| {m['objects_after'] - m['objects_before']:+d} "
                  f"| {m['open_files_after'] - m['open_files_before']:+d} |")
    print("\nPer trial (slopes over the sweep sizes):\n")
    print("| sweep | peak RSS growth during a sweep (KiB) | RSS kept after it (KiB) "
          "| RSS kept after it, trimmed (KiB) | Python objects kept |")
    print("|---|---|---|---|---|")
    for variant, summary in mem.items():
        if summary["peak_growth_bytes_per_trial"] is not None:
            print(f"| {variant} | {summary['peak_growth_bytes_per_trial'] / 1024:.1f} "
                  f"| {summary['kept_growth_bytes_per_trial'] / 1024:.1f} "
                  f"| {summary['kept_in_use_bytes_per_trial'] / 1024:.1f} "
                  f"| {summary['kept_objects_per_trial']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sleep-trials", type=int, default=16)
    parser.add_argument("--sleep-seconds", type=float, default=2.0)
    parser.add_argument("--finetune-trials", type=int, default=8)
    parser.add_argument("--train", type=int, default=120, help="train subsample per fine-tuning trial")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--memory-trials", type=int, nargs="+", default=[10, 40, 160, 640])
    parser.add_argument("--memory-only", action="store_true",
                        help="only the driver memory sweeps, on a cluster of max(--nodes) nodes")
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]  # other work on the machine skews every number
    root = Path(tempfile.mkdtemp(prefix="scale_out-"))
    nodes = [max(args.nodes)] if args.memory_only else args.nodes
    walls = {kind: {n: [] for n in nodes} for kind in ("sleep", "finetune")}
    trial_seconds = {n: [] for n in nodes}
    memory = {}
    try:
        for n in nodes:
            c = cluster(n)
            try:
                ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
                if not args.memory_only:
                    throughput(n, args, root, walls, trial_seconds)
                if n == max(nodes):
                    memory = driver_memory(args, root)
            finally:
                ray.shutdown()
                c.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    mem = {variant: memory_summary(sweeps) for variant, sweeps in memory.items()}
    result = {"nodes": nodes, "trial_resources": {"CPU": 1, "GPU": 1}, "driver_memory": mem,
              "cpu_count": os.cpu_count(),
              "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
              "platform": platform.platform(), "ray": ray.__version__}
    if not args.memory_only:
        counts = {"sleep": args.sleep_trials, "finetune": args.finetune_trials}
        med = {kind: {n: statistics.median(ws) for n, ws in per.items()} for kind, per in walls.items()}
        per_min = {kind: {n: counts[kind] * 60 / w for n, w in m.items()} for kind, m in med.items()}
        speedup = {kind: {n: v / per[min(nodes)] for n, v in per.items()} for kind, per in per_min.items()}
        mean_trial = {n: statistics.median(v) for n, v in trial_seconds.items()}
        result.update({
            "repeats": args.repeats,
            "sleep": {"trials": args.sleep_trials, "seconds": args.sleep_seconds,
                      "ideal_trials_per_minute": {n: n * 60 / args.sleep_seconds for n in nodes}},
            "finetune": {"trials": args.finetune_trials, "train_examples": args.train, "test_examples": 100,
                         "epochs": args.epochs, "model": "raymem-mini", "task": "tweet_sentiment",
                         "mean_trial_seconds": mean_trial},
            "wall_seconds": walls, "median_wall_seconds": med, "trials_per_minute": per_min,
            "speedup": speedup})
        print_throughput(args, per_min, speedup, mean_trial)
    print_memory(max(nodes), mem)
    out = OUT.with_name("scale_out_memory.json") if args.memory_only else OUT
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
