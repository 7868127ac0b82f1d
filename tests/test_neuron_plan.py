"""The neuron stage's plan: its trials, their targets and sources, its cost, and misuse
refused by name."""

from collections import Counter
from pathlib import Path

import pytest

from raymem.config import load_study
from raymem.errors import ConfigError
from raymem.estimate import estimate
from raymem.study import make_plan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the study's relative results folder: not the repository's


def _plan(**overrides):
    study = load_study(REPO / "studies" / "neurons.yaml", overrides)
    return study, make_plan(study, log=lambda *_: None).trials


def test_neuron_trials_per_seed_and_planted_set():
    study, trials = _plan()
    neurons = [t for t in trials if t.stage == "neurons"]
    # per seed: the noisy model and one planted draw in each of the two layer sets
    assert Counter(t.params["target"] for t in neurons) == {"noisy": 2, "planted-2-0": 2, "planted-3+4-0": 2}
    by_id = {t.trial_id: t for t in trials}
    for t in neurons:
        source = by_id[t.params["model_trial"]]
        assert source.params["variant"] == ("noisy" if t.params["target"] == "noisy" else "clean")
        assert source.params["seed"] == t.params["seed"] and t.needs[0] == source.trial_id
    assert {stage: row["trials"] for stage, row in estimate(study)["stages"].items()} == Counter(
        t.stage for t in trials)
    assert estimate(study)["stages"]["neurons"]["flops"] > 0


def test_a_technique_setting_changes_the_neuron_trials_alone():
    _, before = _plan()
    _, after = _plan(**{"neurons.ig_steps": 10})
    changed = {t.stage for t in set(after) - set(before)}
    assert changed == {"neurons"}


@pytest.mark.parametrize("overrides, words", [
    ({"neurons.planted_layers": [[5]]}, "neurons.planted_layers: [5] is outside model raymem-mini"),
    ({"finetune.variants": ["noisy"], "localise.enabled": False}, "neurons: needs finetune"),
])
def test_misuse_is_refused_by_name(overrides, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        _plan(**overrides)


def test_planted_sets_are_one_or_two_layers():
    with pytest.raises(Exception, match="one or two distinct layers"):
        load_study(REPO / "studies" / "neurons.yaml", {"neurons.planted_layers": [[1, 2, 3]]})


def test_neuron_techniques_are_registry_entries_named_in_the_study_file():
    import inspect

    from raymem.localise.registry import NEURON_TECHNIQUES, neuron_technique

    study, _ = _plan()
    assert set(study.neurons.techniques) == set(NEURON_TECHNIQUES)
    for name in NEURON_TECHNIQUES:  # one entry point each, with the same signature
        assert list(inspect.signature(neuron_technique(name)).parameters) == [
            "model", "data", "memorised_index", "clean_index", "p"]
    with pytest.raises(ConfigError, match="unknown neuron technique 'zero-out'.*zero_out"):
        load_study(REPO / "studies" / "neurons.yaml", {"neurons.techniques": ["zero-out"]})


def test_zero_out_costs_the_layers_above_each_zeroed_one():
    """Zero-Out replays the layers below the zeroed one: for layer l of L it runs L-l+1 of
    them, (L+1)/(2L) of a full forward over all layers; activations cost two forwards."""
    from raymem.estimate import model_shape, neuron_cost

    study = load_study(REPO / "studies" / "neurons.yaml")
    shape = model_shape("raymem-mini")
    settings = {k: v for k, v in study.neurons.model_dump().items() if k != "planted_layers"}  # not planted
    p = {**settings, "techniques": ["zero_out"], "deletion_percents": []}
    zero_out, _ = neuron_cost(p, study, shape, train=400, T=20)
    activations, _ = neuron_cost({**p, "techniques": ["activations"]}, study, shape, train=400, T=20)
    units, layers = shape.layers * 4 * shape.hidden, shape.layers
    assert zero_out / activations == pytest.approx(units * (layers + 1) / (2 * layers) / 2)


def test_scored_examples_changes_the_neuron_trials_alone_and_their_cost():
    study, before = _plan()
    sampled, after = _plan(**{"neurons.scored_examples": 8})
    assert {t.stage for t in set(after) - set(before)} == {"neurons"}
    assert all(t.params["scored_examples"] == 8 for t in after if t.stage == "neurons")
    assert all("scored_examples" not in t.params for t in before)  # unset: the ids of earlier runs
    flops = [estimate(s)["stages"]["neurons"]["flops"] for s in (study, sampled)]
    assert flops[1] < 0.7 * flops[0]  # 60 memorised examples scored before, 8 now (planting and masks stay)
