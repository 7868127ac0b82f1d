"""Training settings as a trial records them: as given, or, where the study searches, with
the searched keys deferred to the search trial's winner (raymem/stages/search.py), read
when the trial runs. Stages and localisation techniques both read them here.
"""

from __future__ import annotations

import polars as pl

SEARCH_STAGE = "search"
SEARCHED = ("lr", "epochs", "batch_size")


def deferred_settings(settings: dict, search_trial: str, keep: tuple[str, ...] = ()) -> dict:
    """`settings` with the searched keys, but those in `keep`, replaced by the search trial's id."""
    return {**{k: v for k, v in settings.items() if k not in SEARCHED or k in keep}, "search_trial": search_trial}


def resolve_settings(settings: dict, store) -> dict:
    """Settings as a trial records them -> the values to train with (the winner's, where searched)."""
    settings = dict(settings)
    search_trial = settings.pop("search_trial", None)
    if search_trial is None:
        return settings
    winner = store.read_shard("search", SEARCH_STAGE, search_trial).filter(pl.col("winner")).row(0, named=True)
    return {**{k: winner[k] for k in SEARCHED if k not in settings}, **settings}
