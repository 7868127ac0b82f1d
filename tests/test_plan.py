"""`raymem plan`: offline, the planner's own trials, and costs that follow from the sizes."""

import json
from collections import Counter
from pathlib import Path

import pytest

from raymem.cli import main
from raymem.config import Study, load_study
from raymem.estimate import PUBLISHED_SHAPES, estimate, model_shape, trial_cost
from raymem.study import make_plan
from raymem.trial import Trial

REPO = Path(__file__).resolve().parent.parent
STUDIES = sorted((REPO / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_plans_offline(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative results folder would land here: it must not
    out = tmp_path / "plan.json"
    assert main(["plan", str(path), "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["total"]["trials"] == sum(s["trials"] for s in plan["stages"].values())
    assert f"study {plan['study']}: {plan['total']['trials']} trials" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out]  # nothing of the study's store was touched


@pytest.mark.parametrize("name", ["demo", "demo_localise"])
def test_its_trials_are_the_planners(name):
    study = load_study(REPO / "studies" / f"{name}.yaml")
    planned = Counter(t.stage for t in make_plan(study, log=lambda *_: None).trials)
    assert {stage: row["trials"] for stage, row in estimate(study)["stages"].items()} == planned


def test_the_published_grid_is_counted_as_the_planner_counts_it():
    plan = estimate(load_study(REPO / "studies" / "dankers2024.yaml"))
    trials = {stage: row["trials"] for stage, row in plan["stages"].items()}
    # 12 tasks x 4 models x 3 seeds x 2 variants; x 30 subset models per task and model;
    # 11 tasks (not the auxiliary sst2) x 4 models x 3 seeds x (3 planted pairs x 2 variants + the
    # frozen model forgetting gradients divides by); 540 pairs of 12 retraining trials (one per
    # start layer: 78 windows) and 4 other techniques; 12 tasks x 4 models x 3 seeds x (the
    # noisy model + units planted in 2 layer sets, one draw each) neuron trials
    assert trials["finetune"] == 288 and trials["counterfactual"] == 1440 and trials["control"] == 924
    assert trials["localise"] == 8640 and trials["neurons"] == 432 and plan["total"]["trials"] == 12900
    assert plan["models"]["bert-base-cased"]["layers"] == 12
    assert plan["examples"]["sst2_sentences"]["train"] == 6920  # the sentence-level SST-2, as the original


def test_a_local_models_shape_comes_from_its_files():
    shape = model_shape("raymem-mini")
    assert (shape.layers, shape.hidden) == (4, 128)
    assert 1_000_000 < shape.parameters < 5_000_000
    assert PUBLISHED_SHAPES["bert-base-cased"].parameters == 108_310_272


def test_costs_scale_with_epochs_examples_and_parameters():
    study = Study.model_validate({"study": "s", "tasks": ["tweet_sentiment"], "eval_split": "test",
                                  "finetune": {"max_length": 64}})
    tasks = {"t": ({"train": 100, "test": 50}, 32.0)}
    shapes = {"m": PUBLISHED_SHAPES["bert-base-cased"]}
    P = shapes["m"].parameters

    def cost(stage, **params):
        return trial_cost(Trial(stage, {"task": "t", "model": "m", **params}, "s", "/r"), study, tasks, shapes)
    flops, stored = cost("finetune", settings={"epochs": 10})
    # 10 epochs of training (6P per token) and training-set predictions (2P), then two
    # checkpoints' predictions of the test split; two fp32 checkpoints kept
    assert flops == 10 * 8 * P * 100 * 32 + 2 * 2 * P * 50 * 32
    assert stored >= 2 * 4 * P
    assert cost("finetune", settings={"epochs": 20})[0] > 1.9 * flops
    assert cost("counterfactual", settings={"epochs": 10})[0] < flops  # half the examples


def test_an_unknown_gpu_is_named(capsys):
    assert main(["plan", str(REPO / "studies" / "demo.yaml"), "--gpu", "H10"]) == 2
    assert "--gpu: unknown GPU 'H10' (did you mean 'H100'?)" in capsys.readouterr().err


def test_subset_models_train_at_the_originals_recipe_unless_the_study_says_otherwise():
    # the original's generalisation-score models: 10 epochs at 3e-5 (run_training.sh, mmap), not
    # its fine-tuning's 50 at 1e-5; the demo keeps its finetune block's, in its study file
    from raymem.study import plan_trials

    def subset_settings(study, n_layers):
        trials = plan_trials(study, study.results, {t: 3 for t in study.task_names()} | {"tweet_polarity": 2},
                             {m: n_layers for m in study.models})
        return next(t.params["settings"] for t in trials if t.stage == "counterfactual")

    published = load_study(REPO / "studies" / "dankers2024.yaml")
    assert (published.counterfactual.epochs, published.counterfactual.lr) == (10, 3e-5)
    settings = subset_settings(published, 12)
    assert (settings["epochs"], settings["lr"]) == (10, 3e-5)
    settings = subset_settings(load_study(REPO / "studies" / "demo_localise.yaml"), 4)
    assert (settings["epochs"], settings["lr"]) == (20, 0.001)
