-- PreCog by how often an example was planted in the pre-training corpus (raymem's own masked-LM).
-- The ground truth of PreCog: examples seen more often in pre-training must be easier to
-- reconstruct. Each example counts once per task it belongs to.
SELECT p.task, p.model, p.k, e.planted_count,
       COUNT(*) AS n_examples,
       ROUND(AVG(p.score), 4) AS mean_precog,
       ROUND(MEDIAN(p.score), 4) AS median_precog,
       ROUND(AVG(p.pll), 4) AS mean_pll
FROM precog p
JOIN examples e USING (task, model, example_id)
GROUP BY ALL
ORDER BY p.task, p.model, p.k, e.planted_count;
