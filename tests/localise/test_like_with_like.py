"""Like with like (as the original code): swapping, retraining, probing and centroids compare
the noisy model's final checkpoint with its clean twin's; forgetting gradients reads the noisy
model at its memorised checkpoint. `localise.checkpoint: memorised` compares the noisy model's
memorised checkpoint with a clean twin trained to that same epoch."""

from pathlib import Path

from raymem.config import load_study
from raymem.localise.registry import technique
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


def test_the_memorised_setting_pairs_the_memorised_checkpoint_with_a_clean_twin_at_that_epoch():
    study = load_study(REPO / "studies" / "demo_localise.yaml", {"localise.checkpoint": "memorised"})
    plan = make_plan(study, log=lambda *_: None)
    clean = {(t.params["task"], t.params["seed"]): t for t in plan.of_stage("finetune")
             if t.params["variant"] == "clean" and "until_epoch_of" not in t.params}
    noisy = {(t.params["task"], t.params["seed"]): t for t in plan.of_stage("finetune")
             if t.params["variant"] == "noisy"}
    twins = {(t.params["task"], t.params["seed"]): t for t in plan.of_stage("finetune") if "until_epoch_of" in t.params}
    assert sorted(twins) == sorted(clean)  # one per studied pair
    for key, twin in twins.items():
        assert twin.params["until_epoch_of"] == noisy[key].trial_id and noisy[key].trial_id in twin.needs
        assert {k: v for k, v in twin.params.items() if k != "until_epoch_of"} == clean[key].params
    for trial in plan.of_stage("localise"):
        if trial.params["pair"]:  # the control setup: final checkpoints, its own clean model
            assert trial.params["checkpoint"] == technique(trial.params["technique"]).noisy_checkpoint
            assert trial.params["clean_trial"] not in {t.trial_id for t in twins.values()}
        else:
            assert trial.params["checkpoint"] == "memorised"
            assert trial.params["clean_trial"] == twins[trial.params["task"], trial.params["seed"]].trial_id
    assert {t.params["checkpoint"] for t in plan.of_stage("hidden") if not t.params["pair"]} == {"memorised"}


def test_a_clean_twin_is_the_clean_run_as_it_was_at_the_memorised_epoch(tmp_path):
    """Stopped at epoch 2 of a 4-epoch schedule (not a 2-epoch one): the clean run's weights
    after its second epoch, predictions in between changing nothing."""
    import numpy as np
    import polars as pl
    import torch

    from raymem.runtime import Runtime
    from raymem.stages import finetune
    from raymem.store import Store
    from raymem.train import TrainSettings, fine_tune, predict
    from raymem.trial import Trial

    store = Store(str(tmp_path / "results"))
    texts = [f"tweet number {i} is {'great' if i % 2 else 'awful'}" for i in range(24)]
    examples = pl.DataFrame({"example_id": [f"e{i:02d}" for i in range(24)], "split": "train", "text": texts,
                             "text_pair": pl.Series([None] * 24, dtype=pl.Utf8), "label": [i % 2 for i in range(24)],
                             "original_label": [i % 2 for i in range(24)]})
    store.write_rows("examples", "examples", "ex", examples, "s")
    store.write_rows("predictions", "finetune", "noisy", pl.DataFrame(
        {"checkpoint": ["memorised", "final"], "epoch": [2, 4]}), "s")
    settings = {"epochs": 4, "lr": 1e-3, "batch_size": 8, "max_length": 16, "warmup": 0.1, "clip": 1.0,
                "weight_decay": 0.01, "freeze_embeddings": True, "memorised_f1": 0.99}
    params = {"task": "t", "model": "raymem-mini", "seed": 3, "variant": "clean", "n_labels": 2,
              "eval_split": "test", "examples_trial": "ex", "settings": settings, "until_epoch_of": "noisy"}
    twin = Trial("finetune", params, "s", str(tmp_path / "results"))
    runtime = Runtime("cpu", "fp32", store=store, trial_id="twin")
    assert finetune.run(twin, runtime) == {} and runtime.info["stopped_at_epoch"] == 2
    got = runtime.load_checkpoint("twin", ("final",))

    # the clean run itself, its weights copied after epoch 2, predicting every epoch as it does
    reference = Runtime("cpu", "fp32", store=store, trial_id="clean", checkpoint_every=0)
    tokenizer = reference.load_tokenizer("raymem-mini", 16)
    reference.seed(3)
    model = reference.load_classifier("raymem-mini", 2, tokenizer.pad_token_id)
    data = finetune.encode_split(tokenizer, examples, np.array(examples["original_label"]), 16)
    kept = {}

    def after_epoch(epoch):
        predict(model, data)
        if epoch == 2:
            kept.update({k: v.clone() for k, v in model.state_dict().items()})
        return False

    s = TrainSettings(**{k: v for k, v in settings.items() if k != "memorised_f1"})
    fine_tune(model, data, s, 3, after_epoch, reference)
    final = model.state_dict()
    for name, value in got.state_dict().items():
        assert torch.equal(value, kept[name]), name
    assert any(not torch.equal(final[k], kept[k]) for k in kept)  # epochs 3-4 moved the clean run on
