"""Trial ids are the contract with results already on disk: a rerun finds finished work by
them. These are the ids planned for studies/demo_localise.yaml; they equal those of the
code before the trial runtime, except the five centroids trials (probing's settings no
longer enter their ids) and the five pair summaries that list them."""

import json
from collections import Counter
from pathlib import Path

from raymem.config import load_study
from raymem.study import make_plan
from raymem.trial import Trial, trial_id

REPO = Path(__file__).resolve().parent.parent
PINNED = Path(__file__).parent / "data" / "demo_localise_trial_ids.json"


def test_demo_localise_trial_ids_are_pinned():
    plan = make_plan(load_study(REPO / "studies" / "demo_localise.yaml"), log=lambda *_: None)
    planned: dict[str, list[str]] = {}
    for trial in plan.trials:
        planned.setdefault(trial.stage, []).append(trial.trial_id)
    assert {stage: sorted(ids) for stage, ids in planned.items()} == json.loads(PINNED.read_text())
    assert len({t.trial_id for t in plan.trials}) == len(plan.trials)  # no two trials share an id


def test_trial_needs_name_planned_trials_of_earlier_stages():
    plan = make_plan(load_study(REPO / "studies" / "demo_localise.yaml"), log=lambda *_: None)
    position = {t.trial_id: i for i, t in enumerate(plan.trials)}
    for i, trial in enumerate(plan.trials):
        assert all(position[need] < i for need in trial.needs), trial.label()
    needs = Counter(t.stage for t in plan.trials if not t.needs)
    assert needs == {"examples": 2}  # every other trial reads something planned before it


def test_trial_id_is_a_hash_of_stage_and_parameters_only():
    a = Trial("finetune", {"seed": 1, "task": "t"}, "s", "/r", runtime={"gpus": 1})
    b = Trial("finetune", {"task": "t", "seed": 1}, "other-study", "/elsewhere", runtime={"gpus": 0.25})
    assert a.trial_id == b.trial_id == trial_id("finetune", {"seed": 1, "task": "t"})
    assert a.trial_id.startswith("finetune-") and len(a.trial_id) == len("finetune-") + 12
    assert Trial("finetune", {"seed": 2, "task": "t"}, "s", "/r").trial_id != a.trial_id
