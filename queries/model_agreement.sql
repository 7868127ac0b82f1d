-- Do the models agree on how deep each task is memorised? Spearman correlation of per-task M-CoG between every pair of models (Dankers & Titov report about 0.7-0.9).
-- A model's M-CoG of a task is mcog_by_task's 'mean': over the paper's four techniques of
-- each seed (NaN left out; centroids not among them), then over seeds. Each pair of models
-- is ranked on the tasks both placed, with average ranks for ties.
WITH per_seed AS (
    SELECT model, task, seed, AVG(mcog) AS mcog FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) AND technique IN ('swapping', 'retraining', 'gradients', 'probing')
    GROUP BY ALL
),
per_task AS (
    SELECT model, task, AVG(mcog) AS mcog FROM per_seed GROUP BY ALL
),
paired AS (
    SELECT a.model AS model_a, b.model AS model_b, a.task, a.mcog AS x, b.mcog AS y
    FROM per_task a JOIN per_task b ON a.task = b.task AND a.model < b.model
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY model_a, model_b ORDER BY x)
                + (COUNT(*) OVER (PARTITION BY model_a, model_b, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY model_a, model_b ORDER BY y)
                + (COUNT(*) OVER (PARTITION BY model_a, model_b, y) - 1) / 2.0 AS ry
    FROM paired
)
SELECT model_a, model_b, COUNT(*) AS n_tasks, ROUND(CORR(rx, ry), 3) AS spearman
FROM ranked GROUP BY ALL ORDER BY model_a, model_b;
