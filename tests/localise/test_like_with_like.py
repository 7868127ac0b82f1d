"""Like with like (as the original code): swapping, retraining, probing and centroids compare
the noisy model's final checkpoint with its clean twin's; forgetting gradients reads the noisy
model at its memorised checkpoint."""

from pathlib import Path

from raymem.config import load_study
from raymem.localise.technique import PairInputs
from raymem.study import make_plan

REPO = Path(__file__).resolve().parents[2]


def test_each_technique_compares_the_checkpoint_of_the_original():
    plan = make_plan(load_study(REPO / "studies" / "demo_localise.yaml"), log=lambda *_: None)
    checkpoint = {}
    for trial in plan.of_stage("localise"):
        checkpoint.setdefault(trial.params["technique"], set()).add(trial.params["checkpoint"])
    assert checkpoint == {"swapping": {"final"}, "retraining": {"final"}, "probing": {"final"},
                          "centroids": {"final"}, "gradients": {"memorised"}}
    assert {t.params["checkpoint"] for t in plan.of_stage("hidden")} == {"final"}  # probing, centroids


class _Runtime:
    def __init__(self):
        self.loaded = []

    def load_checkpoint(self, trial_id, names):
        self.loaded.append((trial_id, names))
        return object()


def test_a_trial_loads_the_noisy_checkpoint_it_names():
    runtime = _Runtime()
    for checkpoint in ("final", "memorised"):
        PairInputs({"memorised_trial": "noisy", "clean_trial": "clean", "checkpoint": checkpoint}, runtime).memorised
    # the memorised checkpoint falls back to the final one for a model that never got there
    assert runtime.loaded == [("noisy", ("final",)), ("noisy", ("memorised", "final"))]
    PairInputs({"clean_trial": "clean"}, runtime).clean
    assert runtime.loaded[-1] == ("clean", ("final",))
