-- Do tasks that generalise better memorise deeper? Spearman correlation across tasks, per model, of the task's generalisation score (mean counterfactual gen of its clean training examples) with its M-CoG and with the centroid analysis's pooled crossing and initiation layers.
-- The M-CoG is mcog_by_task's 'mean' (the paper's four techniques, NaN left out, then seeds);
-- crossing and initiation are the pooled events of the studied pairs, averaged over seeds
-- (a seed without the event is left out). Ties get average ranks.
WITH per_seed AS (
    SELECT task, model, seed, AVG(mcog) AS mcog FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) AND technique IN ('swapping', 'retraining', 'gradients', 'probing')
    GROUP BY ALL
),
depth AS (
    SELECT task, model, 'mcog' AS measure, AVG(mcog) AS value FROM per_seed GROUP BY ALL
    UNION ALL
    SELECT task, model, event AS measure, AVG(layer) AS value FROM events
    WHERE pair = '' AND class_from IS NULL AND layer IS NOT NULL GROUP BY ALL
),
generalisation AS (
    SELECT c.task, c.model, AVG(c.gen) AS mean_gen
    FROM counterfactual c JOIN examples e USING (task, model, example_id)
    WHERE NOT e.noisy GROUP BY ALL
),
paired AS (
    SELECT d.model, d.measure, d.task, d.value AS x, g.mean_gen AS y
    FROM depth d JOIN generalisation g USING (task, model)
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY model, measure ORDER BY x)
                + (COUNT(*) OVER (PARTITION BY model, measure, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY model, measure ORDER BY y)
                + (COUNT(*) OVER (PARTITION BY model, measure, y) - 1) / 2.0 AS ry
    FROM paired
)
SELECT model, measure, COUNT(*) AS n_tasks, ROUND(CORR(rx, ry), 3) AS spearman_with_gen
FROM ranked GROUP BY ALL ORDER BY model, measure;
