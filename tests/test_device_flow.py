"""Device flow on the CPU: every tensor a model is handed went through the runtime's move.

CI has no GPU, so a stage that builds a batch on the CPU and hands it to a model without
moving it (on a GPU: "Expected all tensors to be on the same device") is invisible there.
Here the runtime's move, `raymem.runtime.to_device` (which `Runtime.to_device` and the
library code both call), copies every tensor and remembers the copy's storage; every
model the runtime loads refuses, at its body's and its token embeddings' input, a tensor
(or a view of one) that was not such a copy. A plan of the localisation demo, made tiny,
runs stage by stage with that runtime: fine-tuning, the control setup, hidden states,
and every technique (swapping, retraining at every start layer, forgetting gradients
with its head-only control model, probing, centroids); then PreCog's scorer, and the
centroids' recomputing reference, which runs the model itself.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import raymem.runtime
from raymem.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
# imported before the move is wrapped, so each holds the name to_device that gets replaced
MODULES = ("raymem.train", "raymem.localise.gradients", "raymem.localise.retraining", "raymem.localise.centroids",
           "raymem.localise.probing", "raymem.localise.swapping", "raymem.measures.precog",
           "raymem.stages.finetune", "raymem.stages.control", "raymem.stages.hidden", "raymem.stages.localise")


class Moves:
    """The runtime's move, made visible: each tensor moved is a new copy whose storage is
    remembered (and kept alive, so no unmoved tensor can reuse its address)."""

    def __init__(self):
        self.kept: list[torch.Tensor] = []
        self.storages: set[int] = set()

    def to_device(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        moved = {k: v.clone() for k, v in batch.items()}
        for tensor in moved.values():
            self.kept.append(tensor)
            self.storages.add(tensor.untyped_storage().data_ptr())
        return moved

    def check(self, module, args, kwargs) -> None:
        for value in [*args, *kwargs.values()]:
            if torch.is_tensor(value) and value.untyped_storage().data_ptr() not in self.storages:
                raise AssertionError(f"{type(module).__name__} was handed a tensor {tuple(value.shape)} that "
                                     f"never went through the runtime's to_device: on a GPU it stays on the CPU")

    def guard(self, model):
        """`model`, refusing unmoved inputs (its copies too: deepcopy keeps the hooks)."""
        def check(module, args, kwargs):  # a function: deepcopy would copy a bound method's Moves
            self.check(module, args, kwargs)

        for module in (model.base_model, model.get_input_embeddings()):
            module.register_forward_pre_hook(check, with_kwargs=True)
        return model


class CheckedRuntime(Runtime):
    """The trial's runtime, every model it loads guarded."""
    moves: Moves

    def load_classifier(self, *args, **kwargs):
        return self.moves.guard(super().load_classifier(*args, **kwargs))

    def load_checkpoint(self, *args, **kwargs):
        return self.moves.guard(super().load_checkpoint(*args, **kwargs))

    def load_masked_lm(self, *args, **kwargs):
        return self.moves.guard(super().load_masked_lm(*args, **kwargs))


@pytest.fixture
def moves(monkeypatch):
    """The move wrapped in every raymem module that calls it."""
    for name in MODULES:
        importlib.import_module(name)
    moves, original = Moves(), raymem.runtime.to_device
    for name, module in list(sys.modules.items()):
        if name.startswith("raymem") and getattr(module, "to_device", None) is original:
            monkeypatch.setattr(module, "to_device", moves.to_device)
    monkeypatch.setattr(CheckedRuntime, "moves", moves, raising=False)
    return moves


def test_an_unmoved_batch_is_refused(moves, tmp_path):
    """The check itself: the same batch passes once moved, and not before."""
    from raymem.localise.layers import pooled_hidden_states
    from raymem.train import Encoded

    runtime = CheckedRuntime("cpu", "fp32")
    tokenizer = runtime.load_tokenizer("raymem-mini", 16)
    model = runtime.load_classifier("raymem-mini", 2, tokenizer.pad_token_id)
    batch = Encoded(tokenizer, ["a good day", "bad"], None, np.array([1, 0]), 16).batch([0, 1])
    with pytest.raises(AssertionError, match="never went through the runtime's to_device"):
        pooled_hidden_states(model, batch)
    pooled_hidden_states(model, runtime.to_device(batch))


def tiny_plan(results: Path):
    from raymem.config import load_study
    from raymem.study import make_plan

    study = load_study(REPO / "studies" / "demo_localise.yaml", {
        "results": str(results), "subsample": {"train": 48, "validation": 8, "test": 16},
        "finetune.epochs": 1, "counterfactual.enabled": False, "precog.enabled": False,
        "localise.retrain_epochs": 1, "localise.probe_epochs": 2, "localise.probe_select_after": 1,
        "localise.probe_seeds": [0], "localise.control.epochs": 1, "localise.control.pairs": [[2, 3]]})
    return make_plan(study, log=lambda *_: None)


def test_every_stage_and_technique_moves_what_it_hands_a_model(moves, tmp_path):
    from raymem.localise.centroids import centroid_events_recomputed
    from raymem.measures.precog import PrecogScorer, PrecogSettings
    from raymem.models import model_spec
    from raymem.stages import control, finetune, hidden, localise
    from raymem.train import encode_split, train_split
    from raymem.sweep import write_tables

    plan = tiny_plan(tmp_path / "results")
    store = plan.store
    for trial in plan.of_stage("examples"):
        store.write_rows("examples", "examples", trial.trial_id, plan.examples[trial.params["task"],
                                                                               trial.params["model"]], "s")
    stages = {"finetune": finetune, "control": control, "hidden": hidden, "localise": localise}
    ran = []
    for trial in plan.trials:  # each after the trials it needs
        if trial.stage in stages:
            runtime = CheckedRuntime.for_trial(trial)  # as a worker builds it, from trial.runtime
            write_tables(store, trial, stages[trial.stage].run(trial, runtime))
            ran.append((trial.stage, trial.params.get("technique"), trial.params.get("start")))
    techniques = {t for stage, t, _ in ran if stage == "localise"}
    assert techniques == {"swapping", "retraining", "gradients", "probing", "centroids"}
    starts = [s for stage, t, s in ran if t == "retraining"]
    assert sorted(starts) == [1, 1, 2, 2, 3, 3, 4, 4]  # every start layer, of both pairs
    assert {stage for stage, _, _ in ran} == set(stages)

    # the centroids' reference recomputes hidden states with the model itself
    runtime = CheckedRuntime("cpu", "fp32", store=store)
    trial = plan.of_stage("finetune")[0]
    train = train_split(store, trial.params["examples_trial"])
    data = encode_split(runtime.load_tokenizer("raymem-mini", 64), train, train["label"].to_numpy(), 64)
    model = runtime.load_checkpoint(trial.trial_id, ("final",))
    centroid_events_recomputed(model, data, train["label"].to_numpy(), train["original_label"].to_numpy(),
                               train["noisy"].to_numpy(), pair_examples_only=True)

    # PreCog: its scorer's own runtime moves its copies
    scorer = PrecogScorer(model_spec("raymem-mini"), PrecogSettings(ks=(1,), max_length=32), device="cpu")
    moves.guard(scorer.model)
    for bert_like in (True, False):
        scorer.bert_like = bert_like
        assert scorer.score(train["text"].to_list()[:4])["n_units"].min() > 0
