"""PreCog scorer (Ranaldi et al., 2023) against a naive reference, and against planted truth.

The reference is the obvious, slow computation: one full forward per masked copy,
the model's own full logits, `torch.topk` and `log_softmax`. The batched scorer must
give exactly the same PreCog fractions and (to float noise) the same PLL.
"""

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from raymem.errors import ConfigError
from raymem.measures.precog import PrecogScorer, PrecogSettings, masked_copies, units
from raymem.models import ModelSpec, check_masked_lm, load_masked_lm
from raymem.pretrain import PretrainSettings, planted_examples

KS = (1, 5, 50)
TEXTS = [
    "I love this movie so much, it is the best!",
    "worst day ever... #mondays @work",
    "Unbelievably disappointing performance from the team tonight",
    "ok",
    "the the the the",
    "Can't wait for the weekend :) going to the beach with friends and family",
]
PAIRS = [
    "Great film.",
    "not bad at all",
    "they played poorly",
    "fine by me, thanks",
    "the",
    "Beach trip this weekend",
]


@pytest.fixture(scope="module")
def spec(tiny_mlm):
    return ModelSpec("tiny", str(tiny_mlm))


@pytest.fixture(scope="module")
def scorers(spec):
    """One scorer per settings, built once (loading is most of a small test's time); fp32, as
    the naive references it is checked against (tests/test_runtime.py checks bf16's)."""
    cache = {}

    def get(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = PrecogScorer(spec, PrecogSettings(**kw), precision="fp32")
        return cache[key]

    return get


def reference_units(enc, unit):
    """Positions of each unit, written independently of the scorer's `units`."""
    groups = {}
    for i, segment in enumerate(enc.sequence_ids(0)):
        if segment is not None:  # real tokens only: no [CLS]/[SEP]/padding
            key = i if unit == "subword" else (segment, enc.word_ids(0)[i])
            groups.setdefault(key, []).append(i)
    return list(groups.values())


@torch.no_grad()
def masked_forward(model, tokenizer, enc, masked):
    """Full logits at `masked` positions after masking them all, batch of one."""
    ids = enc["input_ids"].clone()
    targets = ids[0, masked].clone()
    ids[0, masked] = tokenizer.mask_token_id
    logits = model(**{**enc, "input_ids": ids}).logits[0, masked]
    return logits, targets


def naive_scores(scorer, texts, pairs, unit, ks, copies_of=None):
    """PreCog@k and PLL the slow way. `copies_of(i, units)` lists the masked copies of
    example i as lists of units; default: one copy per unit (masking: single)."""
    model, tokenizer = scorer.model, scorer.tokenizer
    out = {f"precog_at_{k}": [] for k in ks} | {"pll": [], "n_units": []}
    for i, text in enumerate(texts):
        enc = tokenizer(text, None if pairs is None else pairs[i], truncation=True,
                        max_length=scorer.max_length, return_tensors="pt")
        example_units = reference_units(enc, unit)
        copies = copies_of(i, example_units) if copies_of else [[u] for u in example_units]
        hits, logps, n = dict.fromkeys(ks, 0), [], 0
        for copy in copies:
            masked = [p for u in copy for p in u]
            logits, targets = masked_forward(model, tokenizer, enc, masked)
            top = torch.topk(logits, max(ks), dim=-1).indices
            in_top = {k: (top[:, :k] == targets[:, None]).any(-1) for k in ks}
            logps += torch.log_softmax(logits, -1)[torch.arange(len(masked)), targets].tolist()
            start = 0
            for u in copy:  # a unit counts when every one of its tokens is in the top k
                for k in ks:
                    hits[k] += bool(in_top[k][start:start + len(u)].all())
                start += len(u)
                n += 1
        for k in ks:
            out[f"precog_at_{k}"].append(hits[k] / n)
        out["pll"].append(float(np.mean(logps)))
        out["n_units"].append(n)
    return {key: np.array(v) for key, v in out.items()}


def assert_same(got, want, ks):
    assert (got["n_units"] == want["n_units"]).all()
    for k in ks:  # fractions of integer counts: exactly equal, not approximately
        np.testing.assert_array_equal(got[f"precog_at_{k}"], want[f"precog_at_{k}"], err_msg=f"k={k}")
    np.testing.assert_allclose(got["pll"], want["pll"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("unit", ["subword", "word"])
@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_matches_naive_reference(scorers, unit, pair):
    scorer = scorers(ks=KS, unit=unit)
    pairs = PAIRS if pair else None
    want = naive_scores(scorer, TEXTS, pairs, unit, KS)
    assert_same(scorer.score(TEXTS, pairs), want, KS)
    # Guard against a vacuous comparison: k must matter and scores must not all be 0 or 1.
    assert not np.array_equal(want["precog_at_1"], want["precog_at_50"])
    assert ((want["precog_at_50"] > 0) & (want["precog_at_50"] < 1)).any()


@pytest.mark.parametrize("unit", ["subword", "word"])
def test_generic_forward_matches_reference_too(spec, unit):
    """Masked-LMs without the BERT layout take the plain forward; it must agree as well."""
    scorer = PrecogScorer(spec, PrecogSettings(ks=KS, unit=unit), precision="fp32")
    assert scorer.bert_like  # the fixture is a BERT: switch the shortcut off by hand
    scorer.bert_like = False
    assert_same(scorer.score(TEXTS, PAIRS), naive_scores(scorer, TEXTS, PAIRS, unit, KS), KS)


def test_roberta_layout_matches_reference(tiny_mlm, tmp_path):
    """The shortcut also serves RoBERTa (positions counted from the padding id)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
    )).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = PrecogScorer(ModelSpec("roberta", str(tmp_path)), PrecogSettings(ks=KS, unit="word"),
                          precision="fp32")
    assert scorer.bert_like
    assert_same(scorer.score(TEXTS, PAIRS), naive_scores(scorer, TEXTS, PAIRS, "word", KS), KS)


def test_pair_segment_ids_reach_the_model(spec):
    """raymem's tokenizer emits no token_type_ids, BERT's does: force them on to check the
    scorer passes segment ids (second segment = 1) into every masked copy."""
    scorer = PrecogScorer(spec, PrecogSettings(ks=KS), precision="fp32")
    scorer.tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    assert scorer.tokenizer("a", "b")["token_type_ids"][-1] == 1
    assert_same(scorer.score(TEXTS, PAIRS), naive_scores(scorer, TEXTS, PAIRS, "subword", KS), KS)


def test_word_units_group_pieces():
    """`word` masks fewer, larger units than `subword` whenever a word splits."""
    word_ids = [None, 0, 0, 1, None, 0, 1, 1, None]
    sequence_ids = [None, 0, 0, 0, None, 1, 1, 1, None]
    assert units(word_ids, sequence_ids, "subword") == [[1], [2], [3], [5], [6], [7]]
    # Word 0 of the first segment and word 0 of the second are different words.
    assert units(word_ids, sequence_ids, "word") == [[1, 2], [3], [5], [6, 7]]


def test_batching_does_not_change_scores(scorers):
    for unit in ("subword", "word"):
        small = scorers(ks=KS, unit=unit, copies_per_batch=7).score(TEXTS, PAIRS)
        large = scorers(ks=KS, unit=unit, copies_per_batch=512).score(TEXTS, PAIRS)
        assert_same(small, large, KS)


def test_very_different_lengths_in_one_batch(scorers):
    """Padding a short copy next to a long one must not change its scores."""
    long = " ".join(["what a long and winding sentence about nothing in particular"] * 6)
    texts = ["hi", long, "meh.", TEXTS[5]]
    scorer = scorers(ks=KS)
    together = scorer.score(texts)
    assert_same(together, naive_scores(scorer, texts, None, "subword", KS), KS)
    alone = [scorer.score([t]) for t in texts]
    assert_same(together, {key: np.concatenate([a[key] for a in alone]) for key in together}, KS)
    assert together["n_units"][1] > 20 * together["n_units"][0]


def test_text_longer_than_the_model_is_truncated_not_a_crash(scorers):
    scorer = scorers(ks=(1,))
    endless = " ".join(f"zq{i}xv" for i in range(300))  # far past every position limit
    out = scorer.score([endless, "ok"])
    assert 0 < out["n_units"][0] <= min(scorer.max_length, scorer.model.config.max_position_embeddings)


def test_random15_deterministic_and_matches_reference(scorers, spec):
    settings = dict(ks=KS, masking="random15", draws=3, seed=7)
    scorer = scorers(**settings)
    first = scorer.score(TEXTS, PAIRS)
    again = PrecogScorer(spec, PrecogSettings(**settings), precision="fp32").score(TEXTS, PAIRS)
    assert_same(first, again, KS)
    for k in KS:
        assert ((first[f"precog_at_{k}"] >= 0) & (first[f"precog_at_{k}"] <= 1)).all()
    assert (first["pll"] < 0).all()

    # Each example: `draws` copies, each masking ceil(15%) of its units (at least one).
    _, _, example_units = scorer.encode(TEXTS, PAIRS)
    n = np.array([len(u) for u in example_units])
    np.testing.assert_array_equal(first["n_units"], 3 * np.maximum(1, np.ceil(0.15 * n)))

    # Multi-mask copies scored the slow way: same draws, one forward per copy.
    copies = masked_copies(example_units, PrecogSettings(**settings))

    def copies_of(i, reference):
        assert reference == example_units[i]
        return [c.groups for c in copies if c.example == i]

    assert_same(first, naive_scores(scorer, TEXTS, PAIRS, "subword", KS, copies_of), KS)

    other = scorers(**{**settings, "seed": 8}).score(TEXTS, PAIRS)
    assert not np.array_equal(other["pll"], first["pll"])  # the seed picks the masks


def test_ray_data_batch_interface(scorers):
    """`__call__` takes a numpy batch; missing pairs (None or NaN) mean a single-text task."""
    scorer = scorers(ks=KS)
    batch = {"example_id": np.array(["a", "b", "c"]), "text": np.array(TEXTS[:3], dtype=object),
             "text_pair": np.array([None, float("nan"), None], dtype=object)}
    out = scorer(batch)
    assert list(out["example_id"]) == ["a", "b", "c"]
    assert_same(out, scorer.score(TEXTS[:3]), KS)


def _save_decoder(kind, path):
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    else:
        model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                         num_attention_heads=2, max_position_embeddings=32,
                                         word_embed_proj_dim=16))
    model.save_pretrained(path)


@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_decoders_are_a_config_error(tmp_path, kind):
    _save_decoder(kind, tmp_path)
    spec = ModelSpec(kind, str(tmp_path))
    for attempt in (check_masked_lm, load_masked_lm, lambda s: PrecogScorer(s, PrecogSettings())):
        with pytest.raises(ConfigError, match="masked-LM"):
            attempt(spec)


def test_planted_examples_score_higher_than_never_planted(tiny_mlm, scorers):
    """Ground truth: raymem knows what its model saw.

    Needs a fixture that actually memorises; see the fixture settings in conftest.py.
    """
    saved = json.loads((tiny_mlm / "pretrain.json").read_text())["settings"]
    settings = PretrainSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    planted = planted_examples(settings)
    manifest = pl.read_csv(tiny_mlm / "planted.csv", schema={"example_id": pl.Utf8, "planted_count": pl.Int64})
    assert planted.select("example_id", "planted_count").equals(manifest)  # same examples as trained on

    scores = scorers(ks=(1, 50)).score(planted["text"].to_list())
    means = (planted.with_columns(pl.Series("p1", scores["precog_at_1"]), pl.Series("pll", scores["pll"]))
             .group_by("planted_count").agg(pl.col("p1").mean(), pl.col("pll").mean(), pl.len()))
    by_count = {row["planted_count"]: row for row in means.iter_rows(named=True)}
    never, often = by_count[0], by_count[max(settings.planted_counts)]
    assert min(never["len"], often["len"]) >= 5
    assert often["p1"] > never["p1"], means
    assert often["pll"] > never["pll"], means
    assert math.isfinite(often["pll"])


@pytest.mark.parametrize("bert_like", [True, False], ids=["bert-shortcut", "masked-positions"])
def test_bf16_rounding_makes_no_tie_with_the_true_token(bert_like):
    """A rival logit half a unit above the true token's, at 256: bf16 (spacing 2 there)
    rounds both to 256, a tie that counted as a hit at k=1. The head ranks in fp32: a miss."""
    from raymem.models import model_spec

    scorer = PrecogScorer(model_spec("raymem-mini"), PrecogSettings(ks=(1,)), device="cpu", precision="bf16")
    scorer.bert_like = bert_like  # False: masked_position_logits, the other head path
    text = "good good good"
    (token,) = set(scorer.tokenizer(text)["input_ids"][1:-1])
    rival = token + 1
    decoder = scorer.model.cls.predictions.decoder
    with torch.no_grad():
        decoder.weight = torch.nn.Parameter(decoder.weight.detach().clone())  # untied: inputs unchanged
        decoder.weight[[token, rival]] = 0
        decoder.bias[token], decoder.bias[rival] = 256.0, 256.5
    assert torch.tensor(256.5).bfloat16().item() == 256.0  # the tie bf16 would make
    assert scorer.score([text])["precog_at_1"][0] == 0.0
    scorer.runtime.precision = "fp32"
    assert scorer.score([text])["precog_at_1"][0] == 0.0
