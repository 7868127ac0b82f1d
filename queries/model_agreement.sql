-- Do the models agree on how deep each task is memorised? Spearman correlation of M-CoG between every pair of models, pooled over technique x task as the original (Dankers & Titov report about 0.7-0.9).
-- spearman (the original's, summarising_visualisations.ipynb): one point per (technique, task)
-- of the paper's four techniques, its M-CoG averaged over seeds (NaN left out; centroids not
-- among them), ranked over all of a pair's points; n_points counts them. spearman_mean_mcog:
-- one point per task, mcog_by_task's 'mean' (the four techniques averaged within each seed,
-- then over seeds); n_tasks counts them. Ties get average ranks. *_low/_high: approximate 95%
-- Fisher-z intervals (standard error sqrt(1.06 / (n - 3)); null for n <= 3): with a handful of
-- tasks a correlation alone says little. A technique's M-CoGs of different tasks share its
-- bias, so pooled points are not independent: read the pooled interval as too narrow. The
-- `intervals` table's model_agreement rows bootstrap spearman_mean_mcog over tasks.
WITH per_technique AS (
    SELECT model, technique, task, AVG(mcog) AS mcog FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) AND technique IN ('swapping', 'retraining', 'gradients', 'probing')
    GROUP BY ALL
),
per_seed AS (
    SELECT model, task, seed, AVG(mcog) AS mcog FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) AND technique IN ('swapping', 'retraining', 'gradients', 'probing')
    GROUP BY ALL
),
per_task AS (
    SELECT model, task, AVG(mcog) AS mcog FROM per_seed GROUP BY ALL
),
paired AS (  -- one point per task (mcog_by_task's 'mean'); raymem/intervals.py bootstraps it over tasks
    SELECT a.model AS model_a, b.model AS model_b, a.task, a.mcog AS x, b.mcog AS y
    FROM per_task a JOIN per_task b ON a.task = b.task AND a.model < b.model
),
pooled AS (  -- one point per (technique, task): the original's
    SELECT a.model AS model_a, b.model AS model_b, a.mcog AS x, b.mcog AS y
    FROM per_technique a JOIN per_technique b ON a.task = b.task AND a.technique = b.technique AND a.model < b.model
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY kind, model_a, model_b ORDER BY x)
                + (COUNT(*) OVER (PARTITION BY kind, model_a, model_b, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY kind, model_a, model_b ORDER BY y)
                + (COUNT(*) OVER (PARTITION BY kind, model_a, model_b, y) - 1) / 2.0 AS ry
    FROM (SELECT 'mean' AS kind, model_a, model_b, x, y FROM paired
          UNION ALL SELECT 'pooled', model_a, model_b, x, y FROM pooled)
),
correlations AS (
    SELECT kind, model_a, model_b, COUNT(*) AS n, CORR(rx, ry) AS r FROM ranked GROUP BY ALL
),
intervals AS (
    SELECT *, CASE WHEN n > 3 AND NOT isnan(r) THEN atanh(GREATEST(LEAST(r, 0.999999), -0.999999)) END AS z,
           SQRT(1.06 / NULLIF(n - 3, 0)) AS se
    FROM correlations
)
SELECT model_a, model_b, p.n AS n_points, ROUND(p.r, 3) AS spearman,
       ROUND(tanh(p.z - 1.959964 * p.se), 3) AS spearman_low, ROUND(tanh(p.z + 1.959964 * p.se), 3) AS spearman_high,
       m.n AS n_tasks, ROUND(m.r, 3) AS spearman_mean_mcog,
       ROUND(tanh(m.z - 1.959964 * m.se), 3) AS spearman_mean_mcog_low,
       ROUND(tanh(m.z + 1.959964 * m.se), 3) AS spearman_mean_mcog_high
FROM (SELECT * FROM intervals WHERE kind = 'pooled') p
FULL JOIN (SELECT * FROM intervals WHERE kind = 'mean') m USING (model_a, model_b)
ORDER BY model_a, model_b;
