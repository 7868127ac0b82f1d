"""Trials start when their inputs are done, longest chain first, with no stage barriers."""

import json
import sys
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle

from raymem import sweep
from raymem.schedule import ReadyFirst, chain_lengths
from raymem.store import Store
from raymem.trial import Trial


def _trial(stage, name, needs=(), results="/r", **params):
    return Trial(stage, {"name": name, **params}, "s", results, tuple(t.trial_id for t in needs),
                 {"cpus": 1, "gpus": 0})


def released(searcher, tune_id):
    """The raymem trial the searcher hands Tune next, from its plain-data config."""
    return Trial.from_config(searcher.suggest(tune_id)["trial"]["spec"])


def _names(trials):
    return [t.params["name"] for t in trials]


# -- the searcher on its own ---------------------------------------------------------------
def test_trials_on_the_longest_chain_go_first():
    noisy = _trial("finetune", "noisy", settings={"epochs": 20})
    clean = _trial("finetune", "clean", settings={"epochs": 20})
    subsets = [_trial("counterfactual", f"subset{i}", settings={"epochs": 20}) for i in range(3)]
    control = _trial("control", "control", settings={"epochs": 12})
    # retraining of a 2-layer model: the trial of start layer 1 retrains two windows
    windows = [_trial("localise", f"start{start}", (noisy, clean), retrain={"epochs": 2}, start=start, n_layers=2)
               for start in (1, 2)]
    probing = _trial("localise", "probing", (noisy, clean))
    trials = [*subsets, control, noisy, clean, *windows, probing]
    lengths = chain_lengths(trials)
    # a fine-tune's chain: itself and the longest trial of its pair's localisation after it
    assert lengths[noisy.trial_id] == 20 + 2 and lengths[windows[0].trial_id] == 2
    assert lengths[control.trial_id] == 2 * 12 and lengths[subsets[0].trial_id] == 10
    searcher = ReadyFirst(trials, set(), lambda t: True)
    first = [released(searcher, f"tune{i}") for i in range(5)]
    assert _names(first) == ["control", "noisy", "clean", "subset0", "subset1"]
    assert all(t.stage != "localise" for t in first)  # not before both of its models are done


def test_a_trial_is_released_when_its_needs_are_done_and_blocked_when_one_failed():
    a, b = _trial("finetune", "a"), _trial("finetune", "b")
    after_a = _trial("localise", "after_a", (a,))
    after_b = _trial("localise", "after_b", (b,))
    summary = _trial("localise-summary", "summary", (after_a,))
    ran = []
    searcher = ReadyFirst([a, b, after_a, after_b, summary], set(), lambda t: ran.append(t) or True)
    assert {released(searcher, "1").params["name"], released(searcher, "2").params["name"]} == {"a", "b"}
    assert searcher.suggest("3") is None  # both out, nothing else ready: wait
    tune_ids = {t.params["name"]: i for i, t in searcher.running.items()}
    searcher.on_trial_complete(tune_ids["a"], {"status": "ok"})
    assert released(searcher, "4") == after_a
    searcher.on_trial_complete(tune_ids["b"], {"status": "failed"})
    assert searcher.suggest("5") is None  # after_a still runs
    searcher.on_trial_complete("4", {"status": "ok"})
    assert searcher.suggest("6") == ReadyFirst.FINISHED  # the summary ran in the driver on the way
    assert ran == [summary] and searcher.blocked == [after_b]


def test_trials_done_before_the_sweep_are_not_released_again():
    a = _trial("finetune", "a")
    after = _trial("localise", "after", (a,))
    searcher = ReadyFirst([a, after], {a.trial_id}, lambda t: True)
    assert released(searcher, "1") == after
    searcher.on_trial_complete("1", {"status": "ok"})
    assert searcher.suggest("2") == ReadyFirst.FINISHED


# -- on a real local Ray: a trial does not wait for an unrelated slow one --------------------
def _timed_entry(config):
    """In place of raymem's trial body: sleep the trial's seconds, note when, finish it."""
    import json
    import time
    from pathlib import Path

    from ray import tune

    from raymem.store import Store

    trial = Trial.from_config(config["trial"]["spec"])
    start = time.time()
    time.sleep(trial.params["seconds"])
    ok = not trial.params.get("fail")
    Path(trial.results, f"{trial.params['name']}.json").write_text(json.dumps([start, time.time()]))
    if ok:
        Store(trial.results).mark_done(trial.trial_id, trial.params)
    tune.report({"done": True, "status": "ok" if ok else "failed"})


@pytest.mark.ray
def test_a_trial_starts_before_an_unrelated_slow_trial_of_an_earlier_stage_ends(tmp_path, monkeypatch):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    monkeypatch.setattr(sweep, "_tune_entry", _timed_entry)
    results = str(tmp_path)
    slow = _trial("finetune", "slow", results=results, seconds=12)
    fast = _trial("finetune", "fast", results=results, seconds=1)
    broken = _trial("finetune", "broken", results=results, seconds=1, fail=True)
    after_fast = _trial("localise", "after_fast", (fast,), results=results, seconds=1)
    after_broken = _trial("localise", "after_broken", (broken,), results=results, seconds=1)
    summary = _trial("localise-summary", "summary", (after_fast,), results=results)
    summarised = {}

    def summarise(trial):  # what the study's driver step does, less the computing
        summarised["at"] = time.time()
        Store(results).mark_done(trial.trial_id, trial.params)
        return True
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        failed = sweep.run_sweep("study", [slow, fast, broken, after_fast, after_broken, summary],
                                 Store(results), 0, log=lambda *_: None,
                                 run_in_driver=summarise)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    times = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(times) == {"slow", "fast", "broken", "after_fast"}  # after_broken never started
    assert _names(failed) == ["broken", "after_broken"]
    # no barrier: the localisation trial and the summary waited for their input, not for `slow`
    assert times["fast"][1] <= times["after_fast"][0] < times["slow"][1]
    assert times["after_fast"][1] <= summarised["at"] < times["slow"][1]


@pytest.mark.ray
def test_a_sweep_larger_than_one_experiment_runs_on_in_the_next(tmp_path, monkeypatch, capsys):
    # Tune keeps each trial's state until its experiment ends: the sweep caps an experiment's
    # trials and goes on in a new one, where a trial that failed earlier stays failed
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(sweep, "_tune_entry", _timed_entry)
    trims = []  # the heap an ended experiment freed goes back to the OS after each one
    monkeypatch.setattr(sweep, "return_freed_memory", lambda: trims.append(1))
    results = str(tmp_path)
    broken = _trial("finetune", "broken", results=results, seconds=0, fail=True)
    chain = [_trial("finetune", "a", results=results, seconds=0)]
    for name in ("b", "c", "d"):
        chain.append(_trial("localise", name, (chain[-1],), results=results, seconds=0))
    after_broken = _trial("localise", "after_broken", (broken,), results=results, seconds=0)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        failed = sweep.run_sweep("study", [broken, *chain, after_broken], Store(results), 0,
                                 log=lambda *_: None, per_experiment=2)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert {p.stem for p in tmp_path.glob("*.json")} == {"broken", "a", "b", "c", "d"}  # each ran once
    assert _names(failed) == ["broken", "after_broken"]
    assert Store(results).done_ids() == {t.trial_id for t in chain}
    # three experiments (2 + 2 + 1 trials); the progress line counts the whole sweep
    assert len(list((tmp_path / "tune").iterdir())) == 3 == len(trims)
    assert "[study] 4/6 done, 1 failed" in capsys.readouterr().out


def test_the_time_left_weighs_the_trials_by_their_cost(capsys, monkeypatch):
    """A sweep runs its long trials first: after a long trial and a short one, counting
    trials would say the short ones left take as long; weighing by cost says they do not."""
    from types import SimpleNamespace

    def tune_trial(trial_id, status):
        return SimpleNamespace(status=status, config={"trial": {"trial_id": trial_id}}, last_result={})

    monkeypatch.setattr(sweep.time, "time", lambda: 1100.0)  # 100 s after the sweep started
    # the sweep ran 10 units of work in an earlier experiment; this one holds 10 + 1 + 1 + 1 + 1
    work = sweep.Work(started=1000.0, costs={"early": 10.0, "long": 10.0, "a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0},
                      ended_before=frozenset({"early"}))
    trials = [tune_trial("long", "TERMINATED"), tune_trial("a", "TERMINATED"), tune_trial("b", "RUNNING"),
              tune_trial("c", "PENDING"), tune_trial("d", "PENDING")]
    sweep.progress_callback("study", total=6, before=(1, 0), work=work)._line(trials)
    # 21 units in 100 s; 3 left: about 14 s (counting trials: 3 of 6 left in 100 s, 100 s)
    assert "[study] 3/6 done, 0 failed, 1 running, 2 pending; 100s so far, about 14s left" \
        in capsys.readouterr().out


def test_a_neuron_trial_costs_as_its_techniques():
    """A neuron trial of studies/neurons.yaml took about four 20-epoch fine-tuning trials;
    counted as one epoch it was put last and the time left was far too low."""
    from raymem.config import load_study
    from raymem.schedule import relative_cost
    from raymem.study import plan_trials

    study = load_study(Path(__file__).parents[1] / "studies" / "neurons.yaml")
    trials = plan_trials(study, study.results, {"tweet_sentiment": 3}, {"raymem-mini": 4})
    finetune = next(t for t in trials if t.stage == "finetune")
    neurons = [t for t in trials if t.stage == "neurons"]
    planted = next(t for t in neurons if "planted_layers" in t.params)
    assert relative_cost(finetune) == 20
    assert 60 < relative_cost(planted) < 100
    cheap = Trial("neurons", {**planted.params, "techniques": ["activations"]}, "s", "/r")
    assert relative_cost(cheap) < 15
    sampled = Trial("neurons", {**planted.params, "techniques": ["zero_out"], "scored_examples": 15}, "s", "/r")
    assert relative_cost(sampled) == pytest.approx(relative_cost(
        Trial("neurons", {**planted.params, "techniques": ["zero_out"]}, "s", "/r")) - 30 * 0.75)


def test_the_time_left_weighs_each_stage_by_what_its_ended_trials_took(capsys, monkeypatch):
    """Relative costs say a neuron trial is worth a fine-tuning trial; the ended ones took 9
    times as long: the neuron trials left are weighed by that, not by the relative cost."""
    from types import SimpleNamespace

    def tune_trial(trial_id, status, took=None):
        return SimpleNamespace(status=status, config={"trial": {"trial_id": trial_id}},
                               last_result={"time_total_s": took} if took else {})

    monkeypatch.setattr(sweep.time, "time", lambda: 1100.0)
    stages = {"f1": "finetune", "f2": "finetune", "n1": "neurons", "n2": "neurons", "n3": "neurons"}
    work = sweep.Work(started=1000.0, costs={i: 1.0 for i in stages}, stages=stages)
    trials = [tune_trial("f1", "TERMINATED", 10.0), tune_trial("f2", "TERMINATED", 10.0),
              tune_trial("n1", "TERMINATED", 90.0), tune_trial("n2", "PENDING"), tune_trial("n3", "PENDING")]
    sweep.progress_callback("study", total=5, work=work)._line(trials)
    # 110 s of trial time in 100 s; left: two neuron trials of 90 s each, about 164 s
    # (by relative cost alone: 3 units done in 100 s, 2 left, about 67 s)
    assert "100s so far, about 164s left" in capsys.readouterr().out

    # a later experiment of the same sweep: n1 ended in an earlier one and is weighed as the
    # neuron trials measured here; a trial that failed at once does not make its stage cheap
    work = sweep.Work(started=1000.0, costs={i: 1.0 for i in stages}, stages=stages, ended_before=frozenset({"n1"}))
    trials = [tune_trial("f1", "TERMINATED", 10.0), tune_trial("n2", "TERMINATED", 90.0),
              tune_trial("f2", "ERROR", 0.5), tune_trial("n3", "PENDING")]
    sweep.progress_callback("study", total=5, before=(1, 0), work=work)._line(trials)
    # finetune 10 s a unit, neurons 90: spent n1 + f1 + n2 + f2 (failed: ended, at the
    # stage's measured rate) = 9 + 1 + 9 + 1 units of 10 s; n3 left, 9 units: about 45 s
    assert "100s so far, about 45s left" in capsys.readouterr().out


def test_the_progress_line_counts_each_stage(capsys, monkeypatch):
    from types import SimpleNamespace

    def tune_trial(trial_id, status):
        return SimpleNamespace(status=status, config={"trial": {"trial_id": trial_id}}, last_result={})

    monkeypatch.setattr(sweep.time, "time", lambda: 1010.0)
    stages = {"f1": "finetune", "f2": "finetune", "f3": "finetune", "l1": "localise", "l2": "localise"}
    # f1 ended in an earlier experiment; this one ran f2, l1 and has f3, l2 left
    work = sweep.Work(started=1000.0, costs={i: 1.0 for i in stages}, stages=stages, ended_before=frozenset({"f1"}))
    trials = [tune_trial("f2", "TERMINATED"), tune_trial("l1", "TERMINATED"), tune_trial("f3", "RUNNING"),
              tune_trial("l2", "PENDING")]
    progress = sweep.progress_callback("study", total=5, before=(1, 0), work=work)
    progress._line(trials)
    assert "[study] 3/5 done, 0 failed, 1 running, 1 pending; 10s so far, about 7s left " \
           "(finetune 2/3, localise 1/2)" in capsys.readouterr().out
    progress._line([*trials[:2], tune_trial("f3", "TERMINATED"), tune_trial("l2", "TERMINATED")])
    progress._line([*trials[:2], tune_trial("f3", "TERMINATED"), tune_trial("l2", "TERMINATED")])
    assert capsys.readouterr().out.count("5/5 done") == 1  # the last line once
