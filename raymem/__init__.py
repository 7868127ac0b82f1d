"""raymem: Ray-based sweeps for studying memorisation in pre-trained language models.

From Python, `raymem.query(name, **params)` runs queries/NAME.sql on the results
database and returns a polars DataFrame.
"""

from raymem.queries import query

__all__ = ["query"]
