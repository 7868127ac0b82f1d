"""The runtime: device and precision choice, resume state, and bf16 against fp32 on CPU.

Device choice reads Ray's assignment from `sys.modules["ray"]` (never importing Ray);
a stub module stands in for it here. The bf16 tests run bf16 autocast on the CPU (which
supports it) against fp32 on the tiny pre-trained masked-LM and check that what the
stages compute from it (PreCog, predictions, layer scores) agrees within tolerances
measured on this model, each set with a wide margin over the measured difference.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from raymem.errors import ConfigError
from raymem.runtime import PROGRESS, Runtime, TrainingState, assigned_gpu_ids, choose_device, choose_precision
from raymem.store import Store

CPU, CUDA0 = torch.device("cpu"), torch.device("cuda", 0)
REPO = Path(__file__).resolve().parents[1]


# -- device -----------------------------------------------------------------------------
def fake_ray(monkeypatch, gpu_ids, initialized=True):
    """A stand-in for an imported `ray` in this process (restored after the test)."""
    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: initialized
    ray.get_gpu_ids = lambda: list(gpu_ids)
    monkeypatch.setitem(sys.modules, "ray", ray)
    return ray


@pytest.fixture
def no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_the_gpu_ray_assigned_is_cuda_0(monkeypatch, no_visible_devices):
    # Ray narrows CUDA_VISIBLE_DEVICES to the worker's GPUs: GPU 3 is the worker's cuda:0
    fake_ray(monkeypatch, [3])
    assert assigned_gpu_ids() == ["3"]
    assert choose_device("auto", cuda_available=True) == CUDA0


def test_no_gpu_from_ray_and_none_visible_is_the_cpu(monkeypatch, no_visible_devices):
    fake_ray(monkeypatch, [])
    assert assigned_gpu_ids() == []
    assert choose_device("auto", cuda_available=True) == CPU


def test_without_a_gpu_from_ray_cuda_visible_devices_counts(monkeypatch):
    fake_ray(monkeypatch, [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert assigned_gpu_ids() == ["1", "2"]
    assert choose_device("auto", cuda_available=True) == CUDA0


def test_an_uninitialised_ray_is_ignored(monkeypatch, no_visible_devices):
    fake_ray(monkeypatch, [3], initialized=False)
    assert assigned_gpu_ids() == []
    assert choose_device("auto", cuda_available=True) == CPU


def test_hidden_gpus_are_none(monkeypatch):
    fake_ray(monkeypatch, [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert assigned_gpu_ids() == []
    assert choose_device("auto", cuda_available=True) == CPU


def test_cpu_setting_wins_over_assigned_gpus(monkeypatch):
    fake_ray(monkeypatch, [3])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert choose_device("cpu", cuda_available=True) == CPU
    assert choose_device("cpu", cuda_available=False) == CPU  # no error: the GPU is not wanted


def test_an_assigned_gpu_cuda_cannot_see_is_an_error(monkeypatch, no_visible_devices):
    fake_ray(monkeypatch, [3])
    with pytest.raises(ConfigError) as error:
        choose_device("auto", cuda_available=False)
    message = str(error.value)
    assert "GPU 3" in message and "`device: cpu`" in message


def test_cuda_asked_for_without_cuda_is_an_error(monkeypatch, no_visible_devices):
    fake_ray(monkeypatch, [])
    with pytest.raises(ConfigError, match="device: cuda was set.*`device: cpu`"):
        choose_device("cuda", cuda_available=False)
    assert choose_device("cuda", cuda_available=True) == CUDA0


@pytest.mark.parametrize("setting", ["gpu", "cuda:1", "", "CPU"])
def test_an_unknown_device_setting_is_an_error(setting):
    with pytest.raises(ConfigError, match="device: expected one of auto, cpu, cuda"):
        choose_device(setting, gpu_ids=[], cuda_available=True)


# -- precision --------------------------------------------------------------------------
def test_auto_precision_on_the_cpu_is_bf16_only_where_it_multiplies_bf16_natively(monkeypatch):
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert choose_precision("auto", CPU) == expected
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert choose_precision("auto", CPU) == "bf16"


def test_auto_precision_on_a_gpu_follows_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", CUDA0) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_precision("auto", CUDA0) == "fp32"


@pytest.mark.parametrize("setting", ["fp32", "bf16", "fp16"])
def test_explicit_precisions_pass(setting):
    assert choose_precision(setting, CPU) == setting


@pytest.mark.parametrize("setting", ["float32", "bf-16", "fp64", ""])
def test_an_unknown_precision_is_an_error(setting):
    with pytest.raises(ConfigError, match="precision: expected one of"):
        choose_precision(setting, CPU)


# -- Runtime ----------------------------------------------------------------------------
def test_runtime_on_cpu_records_device_and_precision(monkeypatch, no_visible_devices):
    fake_ray(monkeypatch, [])  # no GPU from Ray, none visible
    monkeypatch.setattr("raymem.runtime.cpu_multiplies_bf16", lambda: False)
    for device in ("cpu", "auto"):
        runtime = Runtime(device)
        assert runtime.device == CPU
        assert runtime.info["device"] == "cpu" and runtime.info["precision"] == "fp32"


def test_bf16_autocast_runs_a_linear_in_bfloat16():
    linear, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    with Runtime("cpu", "bf16").autocast():
        assert linear(x).dtype == torch.bfloat16
    with Runtime("cpu", "fp32").autocast():
        assert linear(x).dtype == torch.float32
    assert Runtime("cpu", "bf16").info["precision"] == "bf16"


def test_a_gpu_that_only_emulates_bf16_gets_fp32(monkeypatch):
    """Pre-Ampere GPUs emulate bf16 (slower than fp32): torch counts that as support by default."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert choose_precision("auto", CUDA0) == "fp32"


@pytest.fixture
def matmul_precision(monkeypatch):
    """torch's fp32 matmul settings, back to its defaults afterwards."""
    monkeypatch.delenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", raising=False)
    yield
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.cudnn.fp32_precision = "none"


def fake_gpu(monkeypatch):
    """A Runtime that believes it is on cuda:0 (nothing runs on it)."""
    monkeypatch.setattr("raymem.runtime.choose_device", lambda setting: CUDA0)
    monkeypatch.setattr("raymem.runtime.device_name", lambda device: "cuda:0 Test GPU")


def test_fp32_on_a_gpu_is_full_fp32_and_tf32_forced_anyway_is_recorded_as_tf32(monkeypatch, matmul_precision):
    from raymem.runtime import recorded_precision

    fake_gpu(monkeypatch)
    torch.set_float32_matmul_precision("high")  # what a library or a user may have left set: TF32
    runtime = Runtime("cuda", "fp32")
    assert torch.backends.cuda.matmul.fp32_precision == "ieee" and runtime.info["precision"] == "fp32"
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")  # forces TF32 whatever torch is told
    assert Runtime("cuda", "fp32").info["precision"] == "tf32"
    assert Runtime("cuda", "bf16").info["precision"] == "bf16"  # autocast: the setting
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert recorded_precision("fp32", CUDA0) == "tf32" and recorded_precision("fp32", CPU) == "fp32"


@pytest.fixture
def deterministic_off(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    Runtime("cpu", "fp32")  # every Runtime sets it: back to torch's default, off


def test_deterministic_reaches_torch_and_cublas_through_the_trials_runtime_field(deterministic_off):
    import os

    from raymem.trial import Trial

    trial = Trial("finetune", {"seed": 1}, "s", "results", (), {"device": "cpu", "deterministic": True})
    runtime = Runtime.for_trial(trial)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not torch.backends.cudnn.benchmark
    Runtime.for_trial(Trial("finetune", {"seed": 1}, "s", "results", (), {"device": "cpu"}))
    assert not torch.are_deterministic_algorithms_enabled()  # a reused worker's next trial: off again
    assert runtime.trial_id == Trial("finetune", {"seed": 1}, "s", "results").trial_id  # not in the id


def test_deterministic_after_cuda_started_without_a_fixed_workspace_is_an_error(monkeypatch, deterministic_off):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUBLAS_WORKSPACE_CONFIG"):
        Runtime("cpu", "fp32", deterministic=True)


def test_the_deterministic_setting_is_in_every_trial_stages_resources():
    from raymem.config import load_study
    from raymem.study import plan_trials

    study = load_study(REPO / "studies" / "demo_localise.yaml",
                       {"finetune.resources.deterministic": True, "localise.resources.deterministic": True,
                        "localise.hidden_resources.deterministic": True})
    trials = plan_trials(study, "results", {"tweet_sentiment": 3, "tweet_polarity": 2}, {"raymem-mini": 4})
    plain = plan_trials(load_study(REPO / "studies" / "demo_localise.yaml"), "results",
                        {"tweet_sentiment": 3, "tweet_polarity": 2}, {"raymem-mini": 4})
    assert [t.trial_id for t in trials] == [t.trial_id for t in plain]
    ran = {t.stage for t in trials if t.runtime}
    assert ran and all(t.runtime["deterministic"] for t in trials if t.runtime)


def test_weights_changed_inside_one_autocast_are_the_weights_its_forwards_use():
    """Retraining and the head-only control model train, and reload layers, in place inside
    one autocast. Torch's autocast keeps each weight's bf16 cast until the outermost autocast
    exits, so with its cache on every forward would use the weights as they were at the first:
    the loss would never fall while the optimiser pushed the weights ever further."""
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(4, 1), torch.randn(32, 4)
    target = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    optimiser = torch.optim.SGD(linear.parameters(), lr=0.1)
    losses = []
    with Runtime("cpu", "bf16").autocast():
        for _ in range(30):
            loss = ((linear(x).float().squeeze(-1) - target) ** 2).mean()
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            losses.append(loss.item())
        with torch.no_grad():
            linear.weight.zero_()  # an in-place reload, as a window's reset
            assert float(linear(x).float().abs().max()) == pytest.approx(float(linear.bias.abs()), abs=0.02)
    assert losses[-1] < 0.05 * losses[0]


# -- resume -----------------------------------------------------------------------------
STEPS = 3


class Loop:
    """A small training loop: a model, AdamW, a LambdaLR schedule, a data-order generator.

    Each step draws its data from the generator and a noise term from torch's global
    stream, so a resume that failed to restore either would train differently."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.optimiser = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, lambda i: 1 / (1 + i))
        self.state = TrainingState({"model": self.model, "optimiser": self.optimiser, "schedule": self.schedule},
                                   torch.Generator().manual_seed(seed), {"best": None})

    def epoch(self, epoch: int) -> None:
        total = 0.0
        for _ in range(STEPS):
            x = torch.randn(16, 4, generator=self.state.generator)
            y = x.sum(1, keepdim=True) + 0.1 * torch.randn(16, 1)  # global stream
            loss = torch.nn.functional.mse_loss(self.model(x), y)
            loss.backward()
            self.optimiser.step()
            self.schedule.step()
            self.optimiser.zero_grad()
            total += loss.item()
        self.state.losses.append(total / STEPS)
        self.state.extra["best"] = min(self.state.losses)
        self.state.extra["last_epoch"] = epoch

    def parameters(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]


def runtime_on(tmp_path, checkpoint_every: int = 1) -> Runtime:
    return Runtime("cpu", "fp32", store=Store(str(tmp_path / "results")), trial_id="t-1",
                   checkpoint_every=checkpoint_every)


def test_resume_restores_the_training_state_exactly(tmp_path):
    runtime = runtime_on(tmp_path)
    loop = Loop(seed=0)
    for epoch in (1, 2):
        loop.epoch(epoch)
        runtime.save_progress(loop.state, epoch)
    assert runtime.info["epochs_trained"] == 2
    assert runtime.store.exists("checkpoints", "t-1", PROGRESS)
    saved_parameters = loop.parameters()
    saved_losses, saved_extra = list(loop.state.losses), dict(loop.state.extra)
    # what the uninterrupted run draws next, from both streams, and where epoch 3 takes it
    generator_state, torch_state = loop.state.generator.get_state(), torch.get_rng_state()
    next_data = torch.randn(5, generator=loop.state.generator)
    next_noise = torch.rand(5)
    loop.state.generator.set_state(generator_state)
    torch.set_rng_state(torch_state)
    loop.epoch(3)
    uninterrupted = loop.parameters()

    # a restarted trial: other initial weights, other seeds, a fresh runtime on the same store
    fresh = Loop(seed=1)
    torch.manual_seed(12345)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), saved_parameters))
    resumed_runtime = runtime_on(tmp_path)
    assert resumed_runtime.resume(fresh.state) == 3
    assert resumed_runtime.info["resumed_from_epoch"] == 3
    for restored, saved in zip(fresh.parameters(), saved_parameters):
        assert torch.equal(restored, saved)
    assert fresh.state.losses == saved_losses and fresh.state.extra == saved_extra
    assert fresh.schedule.last_epoch == 2 * STEPS
    assert fresh.optimiser.state_dict()["state"][0]["step"] == 2 * STEPS
    assert torch.equal(fresh.state.generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert torch.equal(torch.randn(5, generator=fresh.state.generator), next_data)
    assert torch.equal(torch.rand(5), next_noise)

    # and the resumed epoch 3 is the uninterrupted one, bit for bit
    fresh.state.generator.set_state(generator_state)
    torch.set_rng_state(torch_state)
    fresh.epoch(3)
    for a, b in zip(fresh.parameters(), uninterrupted):
        assert torch.equal(a, b)

    resumed_runtime.finish_training()
    assert resumed_runtime.info["storage_bytes"] == 0  # the progress checkpoint is no result
    resumed_runtime.discard_progress()  # the sweep's, once the trial's results are written
    assert not resumed_runtime.store.exists("checkpoints", "t-1", PROGRESS)
    assert resumed_runtime.info["storage_bytes"] == 0
    assert runtime_on(tmp_path).resume(Loop(seed=2).state) == 1  # nothing left to resume


def test_progress_is_kept_every_checkpoint_every_epochs(tmp_path):
    runtime = runtime_on(tmp_path, checkpoint_every=2)
    loop = Loop(seed=0)
    kept = {}
    for epoch in (1, 2, 3):
        loop.epoch(epoch)
        runtime.save_progress(loop.state, epoch)
        kept[epoch] = runtime.store.exists("checkpoints", "t-1", PROGRESS)
        if epoch == 2:
            after_two = loop.parameters()
    assert kept == {1: False, 2: True, 3: True}
    assert runtime.info["epochs_trained"] == 3
    fresh = Loop(seed=1)
    resumed = runtime_on(tmp_path, checkpoint_every=2)
    assert resumed.resume(fresh.state) == 3  # from epoch 2's checkpoint, not epoch 3
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), after_two))
    assert fresh.state.extra["last_epoch"] == 2 and len(fresh.state.losses) == 2


def test_checkpoint_every_0_never_saves_and_starts_at_epoch_1(tmp_path):
    runtime = runtime_on(tmp_path, checkpoint_every=0)
    loop = Loop(seed=0)
    for epoch in (1, 2):
        loop.epoch(epoch)
        runtime.save_progress(loop.state, epoch)
    assert not runtime.store.exists("checkpoints", "t-1", PROGRESS)
    assert runtime.info["epochs_trained"] == 2
    fresh = Loop(seed=1)
    before = fresh.parameters()
    assert runtime_on(tmp_path, checkpoint_every=0).resume(fresh.state) == 1
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), before))
    # a checkpoint another setting left behind is not read either
    runtime_on(tmp_path, checkpoint_every=1).save_progress(loop.state, 2)
    skipping = runtime_on(tmp_path, checkpoint_every=0)
    assert skipping.resume(fresh.state) == 1 and "resumed_from_epoch" not in skipping.info


# -- bf16 against fp32 (CPU autocast) -------------------------------------------------------
# Measured on the tiny masked-LM of conftest.py (2 layers, hidden 64; torch 2.13 CPU) over
# six builds of it (pre-training is not bit-reproducible: its WordPiece vocabulary varies
# from run to run, huggingface/tokenizers#1794), worst case over the builds:
#   PreCog on 20 tweets, PreCog@1/@5/@50: Spearman >= 0.986 / 0.991 / 0.998,
#     mean |difference| <= 0.0012 / 0.0008 / 0.0010; PLL mean |difference| <= 0.0006 nats
#     (max over texts 0.0024)
#   predictions of the fine-tuned classifier on 48 tweets: argmax agreement 100%,
#     max |probability difference| <= 0.0015 (<= 0.0052 over other fine-tuning settings)
#   forgetting-gradient layer scores (normalised to sum 1): max |difference| <= 0.004,
#     same top layer in every case (smallest fp32 top-two gap 0.014)
# Tolerances below leave a margin of 7x on 1 - Spearman and 5x to 30x on the differences.
KS = (1, 5, 50)
PRECOG_MIN_SPEARMAN = 0.9
PRECOG_MAX_MEAN_ABS_DIFF = 0.02
PLL_MAX_MEAN_ABS_DIFF_NATS = 0.02
PREDICTION_MIN_ARGMAX_AGREEMENT = 0.95
PREDICTION_MAX_ABS_PROB_DIFF = 0.02
LAYER_SCORE_MAX_ABS_DIFF = 0.02


@pytest.fixture(scope="module")
def tweets():
    from raymem.tasks import load_task

    _, splits = load_task("tweet_sentiment")
    # 16 per class (the first test rows are all negative), in a fixed order
    return splits["test"].group_by("label", maintain_order=True).head(16).sort("example_id")


def test_precog_bf16_agrees_with_fp32_spearman_0_9_pll_0_02_nats(tiny_mlm, tweets):
    from raymem.measures.precog import PrecogScorer, PrecogSettings
    from raymem.models import ModelSpec

    texts = tweets["text"].to_list()[:20]
    spec, settings = ModelSpec("tiny", str(tiny_mlm)), PrecogSettings(ks=KS)
    bf16 = PrecogScorer(spec, settings, device="cpu", precision="bf16")
    assert bf16.runtime.precision == "bf16"
    low = bf16.score(texts)
    full = PrecogScorer(spec, settings, device="cpu", precision="fp32").score(texts)
    assert np.array_equal(low["n_units"], full["n_units"])
    for k in KS:
        a, b = full[f"precog_at_{k}"], low[f"precog_at_{k}"]
        assert a.std() > 0, f"PreCog@{k} is constant over the texts: no ranking to compare"
        assert spearmanr(a, b).statistic >= PRECOG_MIN_SPEARMAN, k
        assert np.abs(a - b).mean() <= PRECOG_MAX_MEAN_ABS_DIFF, k
    pll_diff = np.abs(full["pll"] - low["pll"])
    assert pll_diff.mean() < PLL_MAX_MEAN_ABS_DIFF_NATS
    assert pll_diff.max() > 0  # bf16 really ran: not bit-identical to fp32


@pytest.fixture(scope="module")
def classifier(tiny_mlm, tweets):
    """A classifier on the tiny masked-LM, fine-tuned a little (so its predictions vary)."""
    from raymem.models import load_classifier, load_tokenizer, model_spec
    from raymem.train import Encoded, TrainSettings, fine_tune

    spec = model_spec(str(tiny_mlm))
    data = Encoded(load_tokenizer(spec, 64), tweets["text"].to_list(), None, tweets["label"].to_numpy(), 64)
    torch.manual_seed(0)
    model = load_classifier(spec, 3)
    fine_tune(model, data, TrainSettings(epochs=10, lr=3e-3, batch_size=8, freeze_embeddings=False), seed=0)
    return spec, model.eval(), data


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_fine_tune_trains_in_its_runtimes_precision(tiny_mlm, tweets, tmp_path, precision, dtype):
    """A fine-tuning, subset or search trial hands fine_tune its runtime: the training
    forwards run in the study's precision, not only the predictions."""
    from raymem.models import load_classifier, load_tokenizer, model_spec
    from raymem.train import Encoded, TrainSettings, fine_tune

    spec = model_spec(str(tiny_mlm))
    data = Encoded(load_tokenizer(spec, 64), tweets["text"].to_list()[:16], None, tweets["label"].to_numpy()[:16], 64)
    model = load_classifier(spec, 3)
    seen = []
    model.classifier.register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    runtime = Runtime("cpu", precision, store=Store(str(tmp_path / "results")), trial_id="t-1")
    losses = fine_tune(model, data, TrainSettings(epochs=1, lr=1e-3, batch_size=8), seed=0, runtime=runtime)
    assert seen and all(training for training, _ in seen) and {d for _, d in seen} == {dtype}
    assert np.isfinite(losses).all()


def test_predictions_bf16_agree_with_fp32_95_percent_argmax_0_02_probability(classifier):
    from raymem.train import predict

    _, model, data = classifier
    full = predict(model, data)
    with Runtime("cpu", "bf16").autocast():
        low = predict(model, data)
    assert len(set(full.argmax(1).tolist())) > 1, "the classifier predicts one class: nothing to compare"
    assert (full.argmax(1) == low.argmax(1)).mean() >= PREDICTION_MIN_ARGMAX_AGREEMENT
    difference = np.abs(full - low).max()
    assert 0 < difference < PREDICTION_MAX_ABS_PROB_DIFF  # > 0: bf16 really ran


@pytest.mark.parametrize("k", [1, 2])
def test_gradient_layer_scores_bf16_agree_with_fp32_within_0_02_same_top_layer(classifier, k):
    """Forgetting-gradient layer scores of the fine-tuned model against a control whose
    layer k is back at its pre-trained weights (two different score profiles). bf16 may
    move the scores by float rounding only, never enough to change the top layer."""
    from raymem.localise.gradients import forgetting_gradient_scores, matched_clean_index
    from raymem.localise.layers import body_layers
    from raymem.models import load_classifier

    spec, model, data = classifier
    control = copy.deepcopy(model)
    body_layers(control)[k - 1].load_state_dict(body_layers(load_classifier(spec, 3))[k - 1].state_dict())
    noisy_mask = np.zeros(len(data), dtype=bool)
    noisy_mask[::4] = True
    noisy, clean = np.flatnonzero(noisy_mask), matched_clean_index(noisy_mask, seed=0)
    full = forgetting_gradient_scores(model, control, data, noisy, clean)
    with Runtime("cpu", "bf16").autocast():
        low = forgetting_gradient_scores(model, control, data, noisy, clean)
    assert low.sum() == pytest.approx(1.0)
    assert 0 < np.abs(full - low).max() < LAYER_SCORE_MAX_ABS_DIFF  # > 0: bf16 really ran
    assert np.argmax(low) == np.argmax(full)
