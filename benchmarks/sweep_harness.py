"""What the benchmarks that drive raymem's sweep share: a trial body swapped from outside
raymem, and this process's memory sampled while a sweep runs."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import raymem.sweep


@contextlib.contextmanager
def trial_body(entry):
    """raymem.sweep's trial body (`_tune_entry`, looked up when run_sweep is called) swapped
    for `entry`. Define `entry` in the benchmark's own script: Ray then ships it to the
    workers by value, since they cannot import a script's __main__."""
    original = raymem.sweep._tune_entry
    raymem.sweep._tune_entry = entry
    try:
        yield
    finally:
        raymem.sweep._tune_entry = original


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_sampling_rss(fn) -> tuple[float, int]:
    """fn(); its wall seconds and the highest RSS of this process seen while it ran
    (sampled every 0.1 s, and once at its end)."""
    peak, done = [rss()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return time.perf_counter() - start, max(peak[0], rss())
