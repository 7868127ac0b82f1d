"""Label perturbation (Dankers & Titov, 2024): the memorised set.

Per class, a fraction `ratio` of the training examples get a random *different* class.
The choice depends only on `data_seed` and the example ids (not on row order), so every
model seed sees the same noisy set and a rerun reproduces it.
"""

from __future__ import annotations

import numpy as np


def perturb_labels(example_ids: list[str], labels: np.ndarray, n_classes: int, ratio: float,
                   data_seed: int) -> np.ndarray:
    """Return the perturbed labels; `labels != result` marks the noisy examples."""
    labels = np.asarray(labels)
    out = labels.copy()
    if ratio == 0 or n_classes < 2:
        return out
    rng = np.random.default_rng(data_seed)
    order = np.argsort(np.asarray(example_ids))
    for c in range(n_classes):
        members = order[labels[order] == c]
        chosen = rng.choice(members, size=round(ratio * len(members)), replace=False)
        others = np.array([x for x in range(n_classes) if x != c])
        out[chosen] = rng.choice(others, size=len(chosen))
    return out
