"""Memorisation centre of gravity (M-CoG): one number for where a technique puts memorisation.

M-CoG = sum_l l * w_l / sum_l w_l over the layer scores w_1..w_L (layers 1-based), so it
reads as a layer number between 1 and L. Scores must be non-negative. All-zero scores place
memorisation nowhere: M-CoG is NaN then, never a division-by-zero warning or a made-up
layer; NaN scores give NaN too. A task's summary is the mean M-CoG over its techniques,
leaving out the techniques whose M-CoG is NaN (NaN when none is left).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def m_cog(scores) -> float:
    """Centre of gravity of one technique's layer scores, layers numbered from 1; NaN if all zero."""
    weights = np.asarray(scores, dtype=float)
    if weights.ndim != 1 or weights.size == 0:
        raise ValueError(f"M-CoG needs a non-empty vector of layer scores, got shape {weights.shape}")
    if (weights < 0).any():
        raise ValueError(f"M-CoG needs non-negative layer scores, got {weights.min()}")
    total = weights.sum()
    if np.isnan(total) or total == 0:
        return float("nan")
    return float(np.arange(1, weights.size + 1) @ weights / total)


def mean_m_cog(scores_per_technique: Iterable) -> float:
    """Mean M-CoG over techniques (an iterable of score vectors), skipping NaN ones."""
    centres = np.array([m_cog(scores) for scores in scores_per_technique])
    centres = centres[~np.isnan(centres)]
    return float(centres.mean()) if centres.size else float("nan")
