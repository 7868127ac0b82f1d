"""Shared fixtures: offline hub, one CPU thread per test process, tiny models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory):
    """A tiny masked-LM pre-trained by raymem's own `pretrain` stage (about 20 s).

    Same code path as the shipped raymem-mini, at a size CI can afford: this is the
    test that the pretraining stage works end to end.
    """
    from raymem.pretrain import PretrainSettings, pretrain

    out = tmp_path_factory.mktemp("tiny_mlm")
    # Small enough for CI, yet it memorises: tweets planted 16 times are reconstructed far
    # better than never-planted ones (tests/measures/test_precog.py checks it).
    settings = PretrainSettings(vocab_size=1000, layers=2, hidden=64, heads=2, epochs=12, lr=2e-3,
                                max_texts=400, planted_per_count=10, batch_size=32)
    metrics = pretrain(out, settings, log=lambda *_: None)
    assert (out / "model.safetensors").is_file() and metrics["steps"] > 0
    return out
