"""PreCog's logistic regression (Ranaldi et al., 2023): does PreCog predict a fine-tuned
model's correctness beyond an example's length and word rarity?

Built with the database as the `precog_regression` table: per (task, model, k), and pooled
over tasks (task 'ALL', with a fixed effect per task), a logistic regression of the clean
model's correctness on the evaluation split (final checkpoint, every seed) on

    PreCog score, log subword tokens, word rarity   (each standardised: per-SD effects)

One row per term: its coefficient (log-odds per standard deviation), the odds ratio, the
standard error and 95% interval, z and p. Standard errors are clustered by example, since
an example appears once per seed. A fit that cannot be made (one class only, perfect
separation, too few examples) is a row with null estimates and the reason in `note`.
"""

from __future__ import annotations

import warnings

import duckdb
import numpy as np
import polars as pl

from raymem.store import table_names, write_derived

TERMS = ("precog", "log_tokens", "rarity")
MIN_EXAMPLES = 20
SCHEMA = {"task": pl.Utf8, "model": pl.Utf8, "k": pl.Int64, "term": pl.Utf8, "n": pl.Int64,
          "coef": pl.Float64, "odds_ratio": pl.Float64, "se": pl.Float64, "ci_low": pl.Float64,
          "ci_high": pl.Float64, "z": pl.Float64, "p": pl.Float64, "note": pl.Utf8}

DATA = """
SELECT p.task, p.model, p.k, p.example_id, p.score AS precog, ln(e.n_tokens) AS log_tokens, e.rarity,
       pr.correct::INTEGER AS correct, pr.seed
FROM precog p
JOIN examples e USING (task, model, example_id)
JOIN predictions pr USING (task, model, example_id)
WHERE pr.variant = 'clean' AND pr.checkpoint = 'final' AND pr.split <> 'train'
  AND e.split = pr.split AND e.rarity IS NOT NULL AND e.n_tokens > 0
ORDER BY p.task, p.model, p.k, p.example_id, pr.seed
"""


def _standardised(frame: pl.DataFrame) -> np.ndarray:
    x = frame.select(TERMS).to_numpy().astype(float)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def fit(frame: pl.DataFrame, fixed_effects: bool = False) -> tuple[list[dict], str]:
    """One group's fit: rows per term, or none and the reason."""
    import statsmodels.api as sm  # only where a database is built with PreCog in it

    y = frame["correct"].to_numpy()
    if frame.height < MIN_EXAMPLES:
        return [], f"only {frame.height} examples (at least {MIN_EXAMPLES} needed)"
    if y.min() == y.max():
        return [], f"every prediction is {'correct' if y[0] else 'wrong'}: nothing to explain"
    x = _standardised(frame)
    if (x.std(axis=0) == 0).any():
        return [], "a predictor is constant"
    design = [x]
    if fixed_effects:  # pooled: one intercept per task, so task difficulty is not PreCog's
        tasks = frame["task"].to_numpy()
        design.append(np.stack([tasks == t for t in np.unique(tasks)[1:]], axis=1).astype(float)
                      if len(np.unique(tasks)) > 1 else np.empty((len(y), 0)))
    design = sm.add_constant(np.hstack(design), has_constant="add")
    groups = np.unique(frame["example_id"].to_numpy(), return_inverse=True)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-converged or separated fit is a note, not a number
        try:
            result = sm.Logit(y, design).fit(disp=0, cov_type="cluster", cov_kwds={"groups": groups})
        except Exception as exc:  # statsmodels' separation and convergence errors and warnings
            return [], f"the fit failed: {str(exc).splitlines()[0]}"
    ci = result.conf_int()
    return [{"term": term, "n": len(y), "coef": float(result.params[i + 1]),
             "odds_ratio": float(np.exp(result.params[i + 1])), "se": float(result.bse[i + 1]),
             "ci_low": float(ci[i + 1][0]), "ci_high": float(ci[i + 1][1]),
             "z": float(result.tvalues[i + 1]), "p": float(result.pvalues[i + 1]), "note": ""}
            for i, term in enumerate(TERMS)], ""


def regression_rows(data: pl.DataFrame) -> pl.DataFrame:
    rows = []
    groups = [((task, model, k), part, False) for (task, model, k), part in
              data.group_by("task", "model", "k", maintain_order=True)]
    if data["task"].n_unique() > 1:
        groups += [(("ALL", model, k), part, True) for (model, k), part in
                   data.group_by("model", "k", maintain_order=True)]
    for (task, model, k), part, pooled in groups:
        fitted, note = fit(part, fixed_effects=pooled)
        key = {"task": task, "model": model, "k": k}
        rows += [key | r for r in fitted] or [key | {"term": t, "n": part.height, "note": note} for t in TERMS]
    return pl.DataFrame(rows, schema=SCHEMA).sort("task", "model", "k", "term")


def create_precog_regression_table(con) -> int | None:
    """Build `precog_regression` in an open DuckDB database; None when it lacks the inputs."""
    if not {"precog", "examples", "predictions"} <= table_names(con):
        return None
    try:
        data = con.sql(DATA).pl()
    except duckdb.BinderException:  # a table without the columns a study writes: no regression
        return None
    return write_derived(con, "precog_regression", regression_rows(data))
