"""Error classes: they tell bad input (fail before any work) from a lost worker (retry)."""

import difflib
import errno


class RaymemError(Exception):
    """Base class of every error raymem raises on purpose."""


class ConfigError(RaymemError):
    """The study file, a task, a model or a data file is not what raymem expects.

    Raised while planning, before any trial starts and before anything is written.
    The message names the field or file and what was expected.
    """


class TrialFailed(RaymemError):
    """A trial failed for a real reason (a bug, bad data); retrying will not help."""


class StoreFull(RaymemError):
    """The results store (or the disk under it) is full: the study stops; what finished is
    kept, and the same command resumes once there is room."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk or an exceeded quota
    (pyarrow's filesystem errors give the errno in their message only)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StoreFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        if isinstance(exc, OSError) and any(m in str(exc) for m in ("No space left on device",
                                                                    "Disk quota exceeded")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def did_you_mean(name: str, known) -> str:
    """' (did you mean X?)' for the known name closest to a mistyped one, else ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
