-- Spearman and point-biserial correlation of PreCog with correctness of the fine-tuned clean model, per task and k.
-- Over every (example, seed) pair of the evaluation split at the final checkpoint. Spearman
-- is the Pearson correlation of average ranks (ties share their mean rank); point-biserial
-- is the Pearson correlation of the score with the 0/1 correctness.
WITH scored AS (
    SELECT p.task, p.model, p.k, p.score, pr.correct::DOUBLE AS correct
    FROM precog p
    JOIN predictions pr USING (task, model, example_id)
    WHERE pr.variant = 'clean' AND pr.checkpoint = 'final' AND pr.split <> 'train'
),
ranked AS (
    SELECT *,
           RANK() OVER (PARTITION BY task, model, k ORDER BY score)
             + (COUNT(*) OVER (PARTITION BY task, model, k, score) - 1) / 2.0 AS score_rank,
           RANK() OVER (PARTITION BY task, model, k ORDER BY correct)
             + (COUNT(*) OVER (PARTITION BY task, model, k, correct) - 1) / 2.0 AS correct_rank
    FROM scored
)
SELECT task, model, k, COUNT(*) AS n,
       ROUND(CORR(score_rank, correct_rank), 4) AS spearman,
       ROUND(CORR(score, correct), 4) AS point_biserial,
       ROUND(AVG(correct), 4) AS accuracy
FROM ranked GROUP BY ALL ORDER BY task, model, k;
