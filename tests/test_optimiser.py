"""The optimiser as the original's: AdamW with torch's weight decay 0.01, a linear warm-up
over 10% of the steps, then a linear decay to zero."""

import pytest
import torch

from raymem.config import FinetuneConfig
from raymem.train import TrainSettings, make_optimiser


def test_weight_decay_is_torchs_default_and_it_decays():
    assert TrainSettings().weight_decay == FinetuneConfig().weight_decay == 0.01
    weight = torch.nn.Parameter(torch.ones(3))
    optimiser, schedule = make_optimiser([weight], TrainSettings(lr=0.1, warmup=0.0), steps=10)
    assert optimiser.param_groups[0]["weight_decay"] == 0.01
    weight.grad = torch.zeros(3)  # no gradient: only the decoupled decay moves the weight
    optimiser.step()
    assert weight.detach().tolist() == pytest.approx([1 - 0.1 * 0.01] * 3)


def test_the_schedule_warms_up_then_decays_to_zero():
    weight = torch.nn.Parameter(torch.ones(1))
    optimiser, schedule = make_optimiser([weight], TrainSettings(lr=1.0, warmup=0.1), steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)  # 10 warm-up steps
    # then linear to zero, as transformers' get_linear_schedule_with_warmup: (100 - i) / 90
    assert rates[10] == pytest.approx(1.0) and rates[11] == pytest.approx(89 / 90) and rates[-1] == pytest.approx(1 / 90)
