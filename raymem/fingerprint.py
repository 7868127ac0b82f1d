"""Fingerprints of what a trial reads besides its settings: file contents, hashed.

Trial ids carry them (raymem/stages/examples.py), so an edited data file or new model
weights give new ids and their trials run again, while `raymem plan` still loads nothing:
a file is hashed once per process for each (path, size, modification time).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's contents, from the cache while it is unchanged."""
    p = Path(path).resolve()
    stat = p.stat()
    key = (str(p), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def fingerprint(parts: dict) -> str:
    """A short digest of plain data (file hashes and what else fixes an input)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
