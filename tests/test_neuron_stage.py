"""The neuron stage end to end without Ray, on raymem-mini made tiny: fine-tuning, then each
neuron trial through a runtime whose models refuse any tensor that did not go through the
runtime's move (tests/test_device_flow.py), so the stage runs on a GPU as it does here; its
tables are whole and their numbers in range."""

from pathlib import Path

import numpy as np
import polars as pl

import raymem.stages.neurons  # noqa: F401  imported before the move is wrapped (the fixture)
from test_device_flow import CheckedRuntime, moves  # noqa: F401  the fixture

REPO = Path(__file__).resolve().parents[1]


def test_neuron_trials_run_through_the_runtime_and_write_whole_tables(moves, tmp_path):  # noqa: F811
    from raymem.config import load_study
    from raymem.stages import finetune, neurons
    from raymem.study import make_plan
    from raymem.sweep import write_tables

    study = load_study(REPO / "studies" / "neurons.yaml", {
        "results": str(tmp_path / "results"), "seeds": [1], "subsample": {"train": 48, "validation": 8, "test": 16},
        "finetune.epochs": 1, "localise.enabled": False, "neurons.planted_layers": [[2]],
        "neurons.plant_epochs": 2, "neurons.ig_steps": 3, "neurons.slim_epochs": 5, "neurons.hc_epochs": 5,
        "neurons.zero_out_chunk": 256, "neurons.heldout": 8, "neurons.deletion_percents": [1.0],
        "neurons.scored_examples": 4})
    plan = make_plan(study, log=lambda *_: None)
    store = plan.store
    for trial in plan.of_stage("examples"):
        store.write_rows("examples", "examples", trial.trial_id,
                         plan.examples[trial.params["task"], trial.params["model"]], "s")
    stages = {"finetune": finetune, "neurons": neurons}
    for trial in plan.trials:
        if trial.stage in stages:
            write_tables(store, trial, stages[trial.stage].run(trial, CheckedRuntime.for_trial(trial)))
    trials = {t.params["target"]: t.trial_id for t in plan.of_stage("neurons")}
    assert set(trials) == {"noisy", "planted-2-0"}
    n_units = 4 * 512  # raymem-mini
    for target, trial_id in trials.items():
        scores = store.read_shard("neuron_scores", "neurons", trial_id)
        assert scores.height == 5 * n_units and scores.schema["unit"] == pl.Int16
        assert scores["score"].is_finite().all()
        summary = store.read_shard("neuron_summary", "neurons", trial_id)
        assert summary.height == 5
        assert (summary["n_scored"] == 4).all() and (summary["n_memorised"] > 4).all()  # a sample of 4
        deletion = store.read_shard("neuron_deletion", "neurons", trial_id)
        assert deletion.height == 2 * 6  # percent 0 and 1, five techniques and random
        assert deletion["memorised_acc"].is_between(0, 1).all()
    planted = store.read_shard("neuron_summary", "neurons", trials["planted-2-0"])
    assert (planted["k"] == round(0.01 * n_units)).all() and planted["recall_at_k"].is_between(0, 1).all()
    assert np.allclose(planted["chance"], planted["k"] / n_units)
    units = store.read_shard("neuron_planted", "neurons", trials["planted-2-0"])
    assert units.height == round(0.01 * n_units) and set(units["layer"]) == {2}


def test_the_scored_sample_is_seeded_and_within_its_sets():
    from raymem.stages.neurons import scored_sample

    memorised, clean = np.arange(0, 40, 2), np.arange(1, 60, 2)
    assert scored_sample(memorised, clean, None, 1) == (memorised, clean)
    assert scored_sample(memorised, clean, 50, 1) == (memorised, clean)  # fewer than the most: all
    scored, scored_clean = scored_sample(memorised, clean, 5, seed=1)
    assert len(scored) == len(scored_clean) == 5
    assert set(scored) <= set(memorised) and set(scored_clean) <= set(clean)
    assert (np.diff(scored) > 0).all()
    again = scored_sample(memorised, clean, 5, seed=1)
    assert (again[0] == scored).all() and (again[1] == scored_clean).all()
    assert not (scored_sample(memorised, clean, 5, seed=2)[0] == scored).all()
