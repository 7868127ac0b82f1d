"""Layer access shared by every localisation technique, for encoders and decoders.

Layers are numbered 1..L (the embedding block is 0). Pooling is the [CLS] position for
encoders and the last real token for decoders, found from the attention mask (right
padding), never by indexing -1.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from raymem.models import DECODER_TYPES, attention_mask

# where each architecture keeps its stack of layers, below model.base_model
_LAYER_PATHS = ("encoder.layer", "decoder.layers", "h", "layers")


def is_decoder_model(model) -> bool:
    return model.config.model_type in DECODER_TYPES


def first_module(root, paths: tuple[str, ...], kinds) -> torch.nn.Module | None:
    """The first of the dotted `paths` below `root` that is a module of one of `kinds`."""
    for path in paths:
        module = root
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if isinstance(module, kinds):
            return module
    return None


def body_layers(model) -> torch.nn.ModuleList:
    """The model's L transformer layers, in order (BERT, OPT, GPT-Neo, GPT-NeoX/Pythia)."""
    layers = first_module(model.base_model, _LAYER_PATHS, torch.nn.ModuleList)
    if layers is None:
        raise TypeError(f"cannot find the layers of a {model.config.model_type} model")
    return layers


def num_layers(model) -> int:
    return len(body_layers(model))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, decoder: bool) -> torch.Tensor:
    """(batch, tokens, hidden) -> (batch, hidden) at the pooling position."""
    if not decoder:
        return hidden[:, 0]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]


@torch.inference_mode()
def pooled_hidden_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(L+1, batch, hidden): the pooled embedding output and every layer's output."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model.base_model(**inputs, output_hidden_states=True)
    decoder = is_decoder_model(model)
    return torch.stack([pool(h, attention_mask(inputs), decoder) for h in out.hidden_states])


@contextmanager
def layers_replaced(model, count: int, stand_in: torch.nn.Module):
    """Within the block, the lowest `count` body layers are all `stand_in` (a module that
    returns what the last of them would have handed on); the originals are put back after."""
    layers = body_layers(model)
    originals = list(layers[:count])
    try:
        for i in range(count):
            layers[i] = stand_in
        yield
    finally:
        for i, original in enumerate(originals):
            layers[i] = original
