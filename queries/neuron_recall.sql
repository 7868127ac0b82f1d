-- Neurons, planted ground truth: recall@k of the planted FFN units per technique, k their number.
-- Each planted control model (a planted set of units in one or two layers, a draw, a model
-- seed) is one run; recall is the share of the planted units among the technique's top k
-- over all layers, ties sharing the last places. chance = k / (all units). low/high: a 95%
-- t interval of the mean over runs (none from a single run). docs/neurons.md.
WITH runs AS (
    SELECT model, technique, target, recall_at_k, chance, k
    FROM neuron_summary WHERE target LIKE 'planted-%'
), stats AS (
    SELECT model, technique, COUNT(*) AS n_runs, AVG(recall_at_k) AS recall,
           STDDEV_SAMP(recall_at_k) AS sd, AVG(chance) AS chance, AVG(k) AS k
    FROM runs GROUP BY model, technique
), t AS (
    SELECT *, CASE n_runs - 1 WHEN 1 THEN 12.706 WHEN 2 THEN 4.303 WHEN 3 THEN 3.182 WHEN 4 THEN 2.776
                              WHEN 5 THEN 2.571 WHEN 6 THEN 2.447 WHEN 7 THEN 2.365 WHEN 8 THEN 2.306
                              WHEN 9 THEN 2.262 WHEN 10 THEN 2.228 ELSE 1.96 END AS t
    FROM stats
)
SELECT model, technique, n_runs, ROUND(k, 1) AS k,
       ROUND(recall, 3) AS recall_at_k,
       ROUND(GREATEST(0, recall - t * sd / SQRT(n_runs)), 3) AS low,
       ROUND(LEAST(1, recall + t * sd / SQRT(n_runs)), 3) AS high,
       ROUND(chance, 4) AS chance,
       ROUND(recall / chance, 1) AS times_chance
FROM t
ORDER BY model, recall_at_k DESC, technique;
