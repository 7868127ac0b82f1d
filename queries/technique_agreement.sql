-- Do the techniques agree on where memorisation sits? Correlation of their M-CoG across tasks, per model and pooled over models ('ALL', the original's), per technique pair.
-- A technique's M-CoG of a task is its mean over seeds, leaving out NaN (no layer scored);
-- each pair of techniques is compared on the tasks both placed. The original
-- (summarising_visualisations.ipynb) reports Pearson over every (model, task) pooled: the
-- 'ALL' row's `pearson`. `spearman` ranks the same points, with average ranks for ties.
-- pearson_low/high: approximate 95% Fisher-z interval (standard error 1 / sqrt(n - 3); null
-- for n <= 3): a correlation over a handful of tasks says little without it.
WITH per_task AS (
    SELECT model, technique, task, AVG(mcog) AS mcog FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) GROUP BY ALL
),
per_model AS (
    SELECT a.model, a.technique AS technique_a, b.technique AS technique_b, a.task,
           a.mcog AS x, b.mcog AS y
    FROM per_task a JOIN per_task b ON a.model = b.model AND a.task = b.task AND a.technique < b.technique
),
paired AS (  -- 'ALL': every model's tasks pooled, a point per (model, task)
    SELECT * FROM per_model
    UNION ALL SELECT 'ALL' AS model, technique_a, technique_b, model || ' / ' || task AS task, x, y FROM per_model
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY model, technique_a, technique_b ORDER BY x)
                + (COUNT(*) OVER (PARTITION BY model, technique_a, technique_b, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY model, technique_a, technique_b ORDER BY y)
                + (COUNT(*) OVER (PARTITION BY model, technique_a, technique_b, y) - 1) / 2.0 AS ry
    FROM paired
),
correlations AS (
    SELECT model, technique_a, technique_b, COUNT(*) AS n, CORR(rx, ry) AS rho, CORR(x, y) AS r
    FROM ranked GROUP BY ALL
),
fisher AS (
    SELECT *, CASE WHEN n > 3 AND NOT isnan(r) THEN atanh(GREATEST(LEAST(r, 0.999999), -0.999999)) END AS z,
           1 / SQRT(NULLIF(n - 3, 0)) AS se
    FROM correlations
)
SELECT model, technique_a, technique_b, n AS n_tasks, ROUND(rho, 3) AS spearman, ROUND(r, 3) AS pearson,
       ROUND(tanh(z - 1.959964 * se), 3) AS pearson_low, ROUND(tanh(z + 1.959964 * se), 3) AS pearson_high
FROM fisher ORDER BY model = 'ALL', model, technique_a, technique_b;
