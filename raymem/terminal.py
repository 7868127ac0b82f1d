"""What a study shows on the terminal, and where Ray's own output goes instead.

By default the terminal shows raymem's lines only: the plan, progress per stage, warnings
that ask for action, the headline tables and the failed trials' errors. Ray's, Ray Data's
and Tune's own output goes to the study's log file (`log_path`), named when the study
starts:

    Python loggers     `ray` and every `ray.*` logger (ray.data, ray.tune, ray.train):
                       their terminal handlers are swapped for the log file
    worker output      what Ray's log forwarding (`log_to_driver`) would print, prefixed
                       `(pid=...)`, written to the log file instead
    Ray Data           its progress bars are off (its progress lines are `ray.data` logs)
    Tune               its tables (configuration, trial status) are off: Tune's legacy
                       reporter at verbose 0 prints none (RAY_AIR_NEW_OUTPUT=0); each
                       trial's results are in <results>/tune/ as ever
    Python warnings    those raised inside Ray's own code

`raymem study --verbose` leaves all of it on the terminal, as Ray prints it.

A sweep's progress (`status`) is a bar rewritten in place where stdout is a terminal, and
plain lines where it is not (a log, a pipe); raymem's other lines during a study go through
`say`, which ends an open progress line first.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s -- %(message)s"
BAR_WIDTH = 24
_open = {"line": False}  # a progress line is on the terminal without its newline


def say(*args, **kwargs) -> None:
    """print(), after ending the progress line a terminal shows, if one is open."""
    if _open["line"]:
        _open["line"] = False
        sys.stdout.write("\n")
    print(*args, **kwargs)


def status(line: str, fraction: float, final: bool = False) -> None:
    """A progress line: on a terminal, `line` and a bar of `fraction` rewritten in place
    (ended by a newline when `final`); elsewhere the line alone, printed."""
    if not sys.stdout.isatty():
        print(line, flush=True)
        return
    filled = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    sys.stdout.write(f"\r\x1b[K[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {line}" + ("\n" if final else ""))
    sys.stdout.flush()
    _open["line"] = not final


def log_path(db_path: Path, study: str) -> Path:
    """<database's folder>/logs/<study>-<UTC time>.log: beside the database, so local even
    where the results are on object storage."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(db_path).parent / "logs" / f"{study}-{stamp}.log"


def _ray_loggers() -> list[str]:
    """The names of Ray's loggers that exist now: "ray" and every "ray.*"."""
    return ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray."))]


def _is_terminal_handler(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (stderr or stdout), not to a file."""
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    return type(handler).__name__ == "PlainRayHandler" or handler.stream in (
        sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


class RayOutput:
    """Send Ray's output to `path` while the `with` block runs; restore it after.

    Ray configures its loggers when it (and ray.data, ray.tune) is imported and starts log
    forwarding in `ray.init`: `route()` may be called again after either (it is idempotent).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = None
        self.handler: logging.Handler | None = None
        self.removed: dict[str, list[logging.Handler]] = {}
        self.forwarded = None  # Ray's own printing of forwarded worker output, while swapped
        self.progress_bars: bool | None = None
        self.showwarning = None
        self.new_output: str | None = None

    def __enter__(self) -> "RayOutput":
        import ray.data  # noqa: F401  (each configures its loggers on import)
        import ray.tune  # noqa: F401

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", buffering=1, encoding="utf-8")
        self.showwarning, warnings.showwarning = warnings.showwarning, self._warning
        self.handler = logging.StreamHandler(self.file)
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.INFO)  # ray.data logs at DEBUG to its own files already
        context = ray.data.DataContext.get_current()
        self.progress_bars, context.enable_progress_bars = context.enable_progress_bars, False
        # Tune's output engine prints its experiment table even at verbose 0; the legacy one does not
        self.new_output, os.environ["RAY_AIR_NEW_OUTPUT"] = os.environ.get("RAY_AIR_NEW_OUTPUT"), "0"
        self.route()
        return self

    def route(self) -> None:
        """Swap every Ray logger's terminal handlers for the log file, and Ray's printing of
        forwarded worker output for a write to the log file."""
        for name in _ray_loggers():
            logger = logging.getLogger(name)
            terminal = [h for h in logger.handlers if _is_terminal_handler(h)]
            for handler in terminal:
                logger.removeHandler(handler)
            self.removed.setdefault(name, []).extend(terminal)
            # a logger that had a terminal handler, or that does not pass records up to one
            if (terminal or not logger.propagate or name == "ray") and self.handler not in logger.handlers:
                logger.addHandler(self.handler)
        self._forward_workers()

    def _forward_workers(self) -> None:
        from ray._private import worker

        dispatcher = worker.global_worker_stdstream_dispatcher
        printing = [pair for pair in dispatcher.handlers if pair[0] == "ray_print_logs"]
        if self.forwarded is not None or not printing:  # already swapped, or no forwarding
            return
        self.forwarded = printing[0][1]
        ignore_prefix = worker._should_ignore_worker_log_prefix(worker.global_worker)
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", lambda data: worker.print_worker_logs(
            data, self.file, ignore_prefix))

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "/ray/" in str(filename).replace("\\", "/"):  # raised inside Ray's own code
            self.file.write(warnings.formatwarning(message, category, filename, lineno, line))
        else:
            self.showwarning(message, category, filename, lineno, file, line)

    def __exit__(self, *exc) -> None:
        import ray.data
        from ray._private import worker

        dispatcher = worker.global_worker_stdstream_dispatcher
        if self.forwarded is not None and any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
            dispatcher.remove_handler("ray_print_logs")
            dispatcher.add_handler("ray_print_logs", self.forwarded)
        for name, handlers in self.removed.items():
            for handler in handlers:
                logging.getLogger(name).addHandler(handler)
        for name in _ray_loggers():
            logging.getLogger(name).removeHandler(self.handler)
        ray.data.DataContext.get_current().enable_progress_bars = self.progress_bars
        if self.new_output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = self.new_output
        warnings.showwarning = self.showwarning
        self.file.close()
