"""The localisation techniques raymem runs, by name (raymem/localise/technique.py says
what a technique provides). Adding one: a Technique subclass in its own module, and a line
here, "module:attribute". The modules are imported only when a technique is used, so the
study file's validation (raymem/config.py) checks names without loading torch or any technique.
"""

from __future__ import annotations

import functools
import importlib

TECHNIQUES: dict[str, str] = {
    "swapping": "raymem.localise.swapping:Swapping",
    "retraining": "raymem.localise.retraining:Retraining",
    "gradients": "raymem.localise.gradients:Gradients",
    "probing": "raymem.localise.probing:Probing",
    "centroids": "raymem.localise.centroids:Centroids",
}

# Neuron-level techniques (docs/neurons.md): each module's `score(model, data, memorised,
# clean, settings)` gives an (L, U) array, one score per FFN unit of every layer; `settings`
# is the neurons stage's trial parameters (the study file's `neurons:` section). A function,
# not a Technique: the stage's one trial per target plans, plants and writes for every
# neuron technique at once, so scoring is all a neuron technique does.
NEURON_TECHNIQUES: dict[str, str] = {
    "activations": "raymem.localise.neuron_activations:score",
    "zero_out": "raymem.localise.neuron_zero_out:score",
    "integrated_gradients": "raymem.localise.neuron_ig:score",
    "slimming": "raymem.localise.neuron_slimming:score",
    "hard_concrete": "raymem.localise.neuron_hard_concrete:score",
}


def _attribute(entry: str):
    module, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module), attribute)


@functools.cache
def neuron_technique(name: str):
    """The registered neuron technique's `score` function."""
    return _attribute(NEURON_TECHNIQUES[name])


@functools.cache
def technique(name: str):
    """The registered Technique of that name (raymem.localise.technique.Technique), made once."""
    return _attribute(TECHNIQUES[name])()
