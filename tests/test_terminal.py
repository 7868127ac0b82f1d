"""A quiet terminal: Ray's, Ray Data's and Tune's own output goes to the study's log file;
the terminal keeps raymem's lines and each failed trial's error, once."""

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml

from raymem.terminal import RayOutput, _is_terminal_handler, log_path, say, status

REPO = Path(__file__).resolve().parent.parent
# Lines Ray, Ray Data and Tune print: a forwarded worker line "(pid=...)" (coloured or not),
# a Python log record "2026-01-02 03:04:05,678\tINFO ...", a C++ one "[2026-01-02 03:04:05,678 E ...]",
# a bare level, or Tune's tables.
RAY_LINE = re.compile(r"^(\x1b\[\d+m)?\((\S.*? )?pid=\d+|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR)\b|"
                      r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] |^(INFO|WARNING|DEBUG)\b|== Status ==|"
                      r"Trial status|Configuration for experiment|View detailed results here")


def ray_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if RAY_LINE.search(line)]


def test_the_pattern_knows_rays_lines():
    assert ray_lines("2026-12-07 01:27:55,043\tINFO worker.py:2029 -- Started a local Ray instance.")
    assert ray_lines("[2026-12-07 01:27:56,848 E 24236 24236] core_worker.cc:2465: Actor ...")
    assert ray_lines("\x1b[36m(_tune_entry pid=3561)\x1b[0m Exception ignored in")
    assert ray_lines("(MapWorker(MapBatches(PrecogScorer)) pid=12) loading")
    assert ray_lines("(pid=12) loading")
    assert not ray_lines("[study] 2/2 done, 0 failed, 0 running, 0 pending; 14s so far")
    assert not ray_lines("    ray.exceptions.ActorDiedError: The actor died (pid=6338, ip=127.0.0.1)")


def test_log_path_is_beside_the_database(tmp_path):
    path = log_path(tmp_path / "results" / "raymem.duckdb", "demo")
    assert path.parent == tmp_path / "results" / "logs"
    assert re.fullmatch(r"demo-\d{8}-\d{6}\.log", path.name)


def test_ray_loggers_and_warnings_go_to_the_file_and_come_back(tmp_path, capfd, monkeypatch):
    import ray.data

    log = tmp_path / "logs" / "s.log"
    def terminal_handlers():
        return {name: {h for h in logging.getLogger(name).handlers if _is_terminal_handler(h)}
                for name in ("ray", "ray.data")}
    before = terminal_handlers()
    assert before["ray"] and before["ray.data"]
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: shown.append(str(message)))
    original = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with RayOutput(log):
            logging.getLogger("ray").info("from ray")
            logging.getLogger("ray.tune").warning("from tune")
            logging.getLogger("ray.data").info("from ray data")
            warnings.warn_explicit("a deprecation inside Ray", FutureWarning, "/x/site-packages/ray/data/a.py", 1)
            warnings.warn_explicit("raymem's own warning", FutureWarning, "/x/raymem/data.py", 1)
            assert ray.data.DataContext.get_current().enable_progress_bars is False
            assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    out, err = capfd.readouterr()
    text = log.read_text()
    for message in ("from ray", "from tune", "from ray data", "a deprecation inside Ray"):
        assert message in text and message not in out + err
    assert shown == ["raymem's own warning"]  # not Ray's: shown as ever
    assert terminal_handlers() == before
    assert ray.data.DataContext.get_current().enable_progress_bars is True
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ and warnings.showwarning is original


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_in_place_on_a_terminal_and_lines_elsewhere(monkeypatch, capsys):
    status("[study] 1/4 done", 0.25)
    status("[study] 4/4 done", 1.0, final=True)
    assert capsys.readouterr().out == "[study] 1/4 done\n[study] 4/4 done\n"  # not a terminal: lines
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    status("[study] 1/4 done", 0.25)
    status("[study] 2/4 done", 0.5)
    say("[precog] done")  # ends the open bar's line first
    status("[study] 4/4 done", 1.0, final=True)
    say("[ingest] ...")
    assert screen.getvalue() == (f"\r\x1b[K[{'#' * 6}{'.' * 18}] [study] 1/4 done"
                                 f"\r\x1b[K[{'#' * 12}{'.' * 12}] [study] 2/4 done\n[precog] done\n"
                                 f"\r\x1b[K[{'#' * 24}] [study] 4/4 done\n[ingest] ...\n")


@pytest.mark.ray
def test_a_study_shows_raymems_lines_and_each_error_once(tiny_mlm, tmp_path):
    """A small real study with a model whose weights are cut short: its PreCog and its
    fine-tuning trial fail inside Ray (an actor of Ray Data's pool, a Tune worker)."""
    broken = tmp_path / "broken_mlm"
    shutil.copytree(tiny_mlm, broken)
    weights = broken / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    results = tmp_path / "results"
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "study": "quiet", "results": str(results), "models": [str(tiny_mlm), str(broken)],
        "tasks": ["tweet_sentiment"], "seeds": [1], "subsample": {"train": 32, "validation": 8, "test": 16},
        "precog": {"k": [1], "max_length": 32, "actors": {"min_size": 1, "max_size": 1}},
        "finetune": {"variants": ["clean"], "epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        "ray": {"num_cpus": 2}}))
    ray_tmp = tempfile.mkdtemp(prefix="rmq-", dir="/tmp")  # short: Ray's socket paths stay below 107 bytes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_TMPDIR": ray_tmp,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "raymem.cli", "study", str(study)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        from raymem.localcluster import stop_session

        stop_session(proc.pid, grace=2.0)  # whatever of its Ray is left, and nothing else
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    terminal = out + err
    assert ray_lines(terminal) == [], ray_lines(terminal)[:10]
    # the log file, named at the start, holds what Ray printed
    named = re.search(r"\[plan\] Ray's own log: (\S+)", out)
    assert named and out.index("[plan] Ray's own log") < out.index("[finetune]")
    log = Path(named.group(1))
    assert log.parent == results / "logs" and log.is_file()
    text = log.read_text()
    assert "Started a local Ray instance" in text  # the `ray` logger
    assert "Starting execution of Dataset" in text  # Ray Data's
    assert ray_lines(text) and re.search(r"^(\x1b\[\d+m)?\((\S.*? )?pid=\d+", text, re.M)  # workers' output
    # each failed trial's error reaches the terminal in full, once, at the end
    assert "2 trial(s) failed" in err
    tail = err[err.index("2 trial(s) failed"):]
    assert tail.count("SafetensorError: Error while deserializing header") == 2  # PreCog's and the trial's
    assert terminal.count("SafetensorError: Error while deserializing header") == 2
    assert err.count("Traceback (most recent call last)") >= 2 and "Traceback" not in out
    assert "Checks:" in out  # the headline part is still there
