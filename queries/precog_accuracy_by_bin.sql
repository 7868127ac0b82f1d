-- Accuracy of the fine-tuned clean model per PreCog bin, with counts: per task and pooled (task = 'ALL').
-- params: bin_width=0.1 (0, 1]
-- Equal-width bins over [0, 1]; a score of exactly 1 falls in the last bin, and a score on
-- a bin edge in the bin above it (rounding guards against 0.3 / 0.1 = 2.9999...). Accuracy counts
-- every (example, seed) pair on the evaluation split at the final checkpoint; the pooled
-- rows weight each task by its number of examples.
WITH scored AS (
    SELECT p.task, p.model, p.k,
           LEAST(FLOOR(ROUND(p.score / $bin_width, 9)), CEIL(1 / $bin_width) - 1) * $bin_width AS bin_start,
           pr.example_id, pr.correct::DOUBLE AS correct
    FROM precog p
    JOIN predictions pr USING (task, model, example_id)
    WHERE pr.variant = 'clean' AND pr.checkpoint = 'final' AND pr.split <> 'train'
),
per_task AS (
    SELECT task, model, k, bin_start, AVG(correct) AS accuracy,
           COUNT(DISTINCT example_id) AS n_examples, COUNT(*) AS n_predictions
    FROM scored GROUP BY ALL
),
pooled AS (
    SELECT 'ALL' AS task, model, k, bin_start, AVG(correct) AS accuracy,
           COUNT(DISTINCT task || example_id) AS n_examples, COUNT(*) AS n_predictions
    FROM scored GROUP BY model, k, bin_start
)
SELECT task, model, k, ROUND(bin_start, 6) AS bin_start, ROUND(bin_start + $bin_width, 6) AS bin_end,
       ROUND(accuracy, 4) AS accuracy, n_examples, n_predictions
FROM (SELECT * FROM per_task UNION ALL SELECT * FROM pooled)
ORDER BY task = 'ALL', task, model, k, bin_start;
