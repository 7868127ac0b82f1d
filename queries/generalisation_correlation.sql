-- Do tasks that generalise better memorise deeper? Spearman correlation across tasks, per model, of the task's M-CoG and the centroid analysis's pooled crossing and initiation layers with its generalisation score (mean counterfactual gen of its clean training examples) and with its normalised accuracy.
-- The M-CoG is mcog_by_task's 'mean' (the paper's four techniques, NaN left out, then seeds);
-- crossing and initiation are the pooled events of the studied pairs, averaged over seeds
-- (a seed without the event is left out). Normalised accuracy, as the original's: the noisy
-- model's accuracy on the evaluation split (final checkpoint, mean over seeds) rescaled so
-- that a random labelling scores 0 and a perfect one 1, (acc - chance) / (1 - chance), with
-- chance = the expected accuracy of shuffled labels (the sum of squared class shares).
-- Ties get average ranks. 'ALL' pools every model's tasks (the original's "all" row).
-- spearman_with_gen_low/high: approximate 95% Fisher-z interval (standard error
-- sqrt(1.06 / (n - 3)); null for n <= 3); `intervals` has the bootstrap over tasks.
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
evaluated AS (
    SELECT task, model, label, correct::DOUBLE AS correct FROM predictions
    WHERE variant = 'noisy' AND checkpoint = 'final' AND split <> 'train'
),
chance AS (
    SELECT task, model, SUM(share * share) AS chance
    FROM (SELECT task, model, COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY task, model) AS share
          FROM evaluated GROUP BY task, model, label)
    GROUP BY ALL
),
accuracy AS (
    SELECT task, model, (AVG(correct) - ANY_VALUE(chance)) / (1 - ANY_VALUE(chance)) AS norm_accuracy
    FROM evaluated JOIN chance USING (task, model) GROUP BY ALL
    HAVING ANY_VALUE(chance) < 1  -- one class only: no chance to beat
),
per_model AS (  -- one row per (task, measure, score it is set against); tasks without the score left out
    SELECT d.model, d.measure, 'gen' AS against, d.task, d.value AS x, g.mean_gen AS y
    FROM depth d JOIN generalisation g USING (task, model)
    UNION ALL
    SELECT d.model, d.measure, 'norm_accuracy', d.task, d.value, a.norm_accuracy
    FROM depth d JOIN generalisation g USING (task, model) JOIN accuracy a USING (task, model)
),
paired AS (  -- 'ALL': every model's tasks pooled, a point per (model, task), as the original's "all"
    SELECT * FROM per_model
    UNION ALL SELECT 'ALL' AS model, measure, against, model || ' / ' || task AS task, x, y FROM per_model
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY model, measure, against ORDER BY x)
                + (COUNT(*) OVER (PARTITION BY model, measure, against, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY model, measure, against ORDER BY y)
                + (COUNT(*) OVER (PARTITION BY model, measure, against, y) - 1) / 2.0 AS ry
    FROM paired
),
correlations AS (
    SELECT model, measure, COUNT(*) FILTER (WHERE against = 'gen') AS n,
           CORR(rx, ry) FILTER (WHERE against = 'gen') AS r,
           CORR(rx, ry) FILTER (WHERE against = 'norm_accuracy') AS r_accuracy
    FROM ranked GROUP BY ALL
),
fisher AS (
    SELECT *, CASE WHEN n > 3 AND NOT isnan(r) THEN atanh(GREATEST(LEAST(r, 0.999999), -0.999999)) END AS z,
           SQRT(1.06 / NULLIF(n - 3, 0)) AS se
    FROM correlations
)
SELECT model, measure, n AS n_tasks, ROUND(r, 3) AS spearman_with_gen,
       ROUND(tanh(z - 1.959964 * se), 3) AS spearman_with_gen_low,
       ROUND(tanh(z + 1.959964 * se), 3) AS spearman_with_gen_high,
       ROUND(r_accuracy, 3) AS spearman_with_norm_accuracy
FROM fisher ORDER BY model = 'ALL', model, measure;
