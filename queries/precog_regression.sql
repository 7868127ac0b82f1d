-- Logistic regression of correctness on PreCog, with length and word rarity as controls, per task and pooled.
-- Built with the database (raymem/regression.py, statsmodels): the clean model's correctness on
-- the evaluation split at the final checkpoint, every seed; predictors standardised, so `coef`
-- is the change in log-odds per standard deviation. task 'ALL' pools the tasks with one
-- intercept per task. Standard errors clustered by example (one row per seed); `note` says why
-- a fit was not made. k: one PreCog k, or 0 for every k.
-- params: k=0 [0, 1000000]
SELECT task, model, k, term, n, ROUND(coef, 3) AS coef, ROUND(odds_ratio, 3) AS odds_ratio,
       ROUND(se, 3) AS se, ROUND(ci_low, 3) AS ci_low, ROUND(ci_high, 3) AS ci_high,
       ROUND(z, 2) AS z, p, note
FROM precog_regression
WHERE $k = 0 OR k = $k
ORDER BY task = 'ALL', task, model, k, term;
