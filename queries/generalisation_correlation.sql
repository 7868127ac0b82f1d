-- Do tasks that generalise better memorise deeper? Spearman correlation across tasks, per model, of the task's M-CoG and the centroid analysis's pooled crossing and initiation layers with its generalisation score (mean counterfactual gen of its clean training examples) and with its normalised accuracy.
-- The M-CoG is mcog_by_task's 'mean' (the paper's four techniques, NaN left out, then seeds);
-- crossing and initiation are the pooled events of the studied pairs, averaged over seeds
-- (a seed without the event is left out). Normalised accuracy, as the original's: the noisy
-- model's accuracy on the evaluation split (final checkpoint, mean over seeds) rescaled so
-- that a random labelling scores 0 and a perfect one 1, (acc - chance) / (1 - chance), with
-- chance = the expected accuracy of shuffled labels (the sum of squared class shares).
-- Ties get average ranks.
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
paired AS (  -- one row per (task, measure, score it is set against); tasks without the score left out
    SELECT d.model, d.measure, 'gen' AS against, d.task, d.value AS x, g.mean_gen AS y
    FROM depth d JOIN generalisation g USING (task, model)
    UNION ALL
    SELECT d.model, d.measure, 'norm_accuracy', d.task, d.value, a.norm_accuracy
    FROM depth d JOIN generalisation g USING (task, model) JOIN accuracy a USING (task, model)
   ),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY model, measure, against ORDER BY x)
                + (COUNT(*) OVER (PARTITION BY model, measure, against, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY model, measure, against ORDER BY y)
                + (COUNT(*) OVER (PARTITION BY model, measure, against, y) - 1) / 2.0 AS ry
    FROM paired
)
SELECT model, measure, COUNT(*) FILTER (WHERE against = 'gen') AS n_tasks,
       ROUND(CORR(rx, ry) FILTER (WHERE against = 'gen'), 3) AS spearman_with_gen,
       ROUND(CORR(rx, ry) FILTER (WHERE against = 'norm_accuracy'), 3) AS spearman_with_norm_accuracy
FROM ranked GROUP BY ALL ORDER BY model, measure;
