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


@functools.cache
def technique(name: str):
    """The registered Technique of that name (raymem.localise.technique.Technique), made once."""
    module, _, attribute = TECHNIQUES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)()
