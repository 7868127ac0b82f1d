"""Training batches: uniformly shuffled by default (the original's DataLoader), length-sorted
as a named speed setting."""

from pathlib import Path

import numpy as np
import pytest
import torch

from raymem.config import FinetuneConfig, load_study
from raymem.models import attention_mask
from raymem.pretrain import train_tokenizer
from raymem.train import Encoded, TrainSettings, fine_tune

REPO = Path(__file__).resolve().parent.parent
WORDS = "the cat sat on a mat dog ran far away big small red blue green".split()


@pytest.fixture(scope="module")
def data() -> Encoded:
    rng = np.random.default_rng(0)
    texts = list(dict.fromkeys(" ".join(rng.choice(WORDS, rng.integers(1, 15))) for _ in range(220)))[:200]
    tokenizer = train_tokenizer(texts, vocab_size=60, max_length=32)
    return Encoded(tokenizer, texts, None, rng.integers(0, 2, len(texts)), max_length=32)


def _rows(data, batch):
    index = {tuple(f["input_ids"]): i for i, f in enumerate(data.features)}
    return [index[tuple(ids[mask.bool()].tolist())] for ids, mask in zip(batch["input_ids"], attention_mask(batch))]


def test_shuffled_batches_are_consecutive_chunks_of_one_permutation(data):
    batches = list(data.batches(8, torch.Generator().manual_seed(3), "shuffled"))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3)).tolist()
    assert [_rows(data, b) for b in batches] == [order[i:i + 8] for i in range(0, len(data), 8)]


def test_length_sorted_batches_pad_less_than_shuffled_ones(data):
    def padding(order):
        return sum(int((attention_mask(b) == 0).sum()) for b in data.batches(8, torch.Generator().manual_seed(3), order))
    assert padding("length_sorted") < padding("shuffled") / 2
    with pytest.raises(ValueError, match="batch order must be one of"):
        next(data.batches(8, torch.Generator(), "sorted"))


def test_the_studied_models_train_on_shuffled_batches_by_default(data, monkeypatch):
    assert FinetuneConfig().batch_order == "shuffled"
    seen = []
    original = Encoded.batches

    def spy(self, batch_size, generator=None, order="length_sorted"):
        seen.append(order)
        return original(self, batch_size, generator, order)

    monkeypatch.setattr(Encoded, "batches", spy)
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(data.tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=8, pad_token_id=data.tokenizer.pad_token_id, max_position_embeddings=32))
    fine_tune(model, data.subset(range(16)), TrainSettings(epochs=1, batch_size=8, lr=1e-3, batch_order="shuffled"), seed=0)
    assert seen == ["shuffled"]
    # a study's training trials carry the setting: shuffled unless the study says otherwise
    from raymem.study import plan_trials

    published = load_study(REPO / "studies" / "dankers2024.yaml")
    trials = plan_trials(published, published.results, {t: 3 for t in published.task_names()},
                         {m: 12 for m in published.models})
    orders = {t.params["settings"]["batch_order"] for t in trials if t.stage in ("finetune", "counterfactual", "control")}
    assert orders == {"shuffled"}
    # the demo keeps the cheaper length-sorted batches, said in its file
    assert load_study(REPO / "studies" / "demo_localise.yaml").finetune.batch_order == "length_sorted"
