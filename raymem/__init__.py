"""raymem: Ray-based sweeps for studying memorisation in pre-trained language models.

From Python (docs/python-api.md):

    raymem.load_study(path, **overrides)   a study file, validated: .plan(), .run()
    raymem.results(path_or_study)          a read-only DuckDB connection to its database
    raymem.query(name, **params)           queries/NAME.sql on the results database, as a
                                           polars DataFrame

Each is imported on first use, so `import raymem` loads neither Ray, torch nor DuckDB.
"""

__all__ = ["load_study", "query", "results"]


def __getattr__(name: str):
    if name == "query":
        from raymem.queries import query

        return query
    if name in ("load_study", "results"):
        from raymem import api

        return getattr(api, name)
    raise AttributeError(f"module 'raymem' has no attribute {name!r}")
