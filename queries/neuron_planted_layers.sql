-- Neurons aggregated to layers on the planted models: does each technique's layer profile put the planted layers on top?
-- Per model and technique over the planted runs: hit_at_1, the share of runs whose top layer
-- (by summed unit scores, negatives as 0) holds planted units (ties earn nothing: every layer
-- sharing the top score must be planted); planted_mass, the mean share of the profile in the
-- planted layers; chance_mass, the planted layers' share of all layers.
WITH planted_layers AS (
    SELECT DISTINCT task, model, seed, target, layer FROM neuron_planted
), profile AS (
    SELECT l.task, l.model, l.seed, l.target, l.technique, l.layer, l.score,
           p.layer IS NOT NULL AS planted,
           MAX(l.score) OVER (PARTITION BY l.task, l.model, l.seed, l.target, l.technique) AS top,
           COUNT(*) OVER (PARTITION BY l.task, l.model, l.seed, l.target, l.technique) AS n_layers
    FROM neuron_layers l
    LEFT JOIN planted_layers p USING (task, model, seed, target, layer)
    WHERE l.target LIKE 'planted-%'
), runs AS (
    SELECT model, target, seed, technique,
           BOOL_AND(planted) FILTER (WHERE score = top) AND MAX(top) > 0 AS hit_at_1,
           SUM(score) FILTER (WHERE planted) / NULLIF(SUM(score), 0) AS planted_mass,
           SUM(planted::DOUBLE) / ANY_VALUE(n_layers) AS chance_mass
    FROM profile GROUP BY model, target, seed, technique
)
SELECT model, technique, COUNT(*) AS n_runs, ROUND(AVG(hit_at_1::DOUBLE), 3) AS hit_at_1,
       ROUND(AVG(planted_mass), 3) AS planted_mass, ROUND(AVG(chance_mass), 3) AS chance_mass
FROM runs
GROUP BY model, technique
ORDER BY model, planted_mass DESC, technique;
