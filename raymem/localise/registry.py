"""The localisation techniques raymem runs, by name (raymem/localise/technique.py says
what a technique provides). Adding one: a Technique subclass in its own module, and a line here."""

from __future__ import annotations

from raymem.localise.centroids import Centroids
from raymem.localise.gradients import Gradients
from raymem.localise.probing import Probing
from raymem.localise.retraining import Retraining
from raymem.localise.swapping import Swapping
from raymem.localise.technique import Technique

TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    Swapping(),
    Retraining(),
    Gradients(),
    Probing(),
    Centroids(),
)}
