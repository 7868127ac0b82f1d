"""Error classes: they tell bad input (fail before any work) from a lost worker (retry)."""

import difflib


class RaymemError(Exception):
    """Base class of every error raymem raises on purpose."""


class ConfigError(RaymemError):
    """The study file, a task, a model or a data file is not what raymem expects.

    Raised while planning, before any trial starts and before anything is written.
    The message names the field or file and what was expected.
    """


class TrialFailed(RaymemError):
    """A trial failed for a real reason (a bug, bad data); retrying will not help."""


def did_you_mean(name: str, known) -> str:
    """' (did you mean X?)' for the known name closest to a mistyped one, else ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
