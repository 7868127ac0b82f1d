-- Control setup: how often each technique's top one (two) layers fall in the layer pair where memorisation was planted.
-- As published (Dankers & Titov, 2024): accuracy@1, the top layer lies in the pair (chance
-- 2/L); accuracy@2, the share of the top two layers that lie in the pair (chance 2/L).
-- pair_on_top, stricter: both planted layers score above every other layer (chance
-- 1/C(L,2)). Ties earn nothing. The planted pairs are {1,2}, {L/2,L/2+1} and {L-1,L} by default.
-- at_1_low/high and at_2_low/high: 95% Wilson intervals over the RUNS (a run is one planted
-- model: its two top places are not independent). For @2 a run's share lies in [0, 1], so its
-- variance is at most p(1 - p) and Wilson with n = n_runs is a conservative interval.
-- normalised_at_k = (accuracy - chance) / (1 - chance): 0 at chance, 1 when always right, so
-- models of different depth (chance 2/L) compare. published_at_2: Dankers & Titov's accuracy@2
-- read off their figure (about +-0.02), on 12-layer models (chance 1/6); published_normalised_at_2
-- is it on the same normalised scale. Compare a model with fewer layers by the normalised columns.
WITH counts AS (
    SELECT model, technique, COUNT(*) AS n_runs,
           SUM(hit_at_1::DOUBLE) AS hits_1,
           AVG(hit_at_2::DOUBLE) AS share_2, AVG(chance_at_1) AS chance_1, AVG(chance_at_2) AS chance_2,
           AVG(pair_on_top::DOUBLE) AS on_top, AVG(chance_pair_on_top) AS chance_on_top
    FROM control_accuracy GROUP BY model, technique
), wilson AS (
    SELECT *, 1.959964 AS z, hits_1 / n_runs AS p1, share_2 AS p2, n_runs AS n
    FROM counts
), published (technique, published_at_2) AS (
    VALUES ('swapping', 0.98::DOUBLE), ('retraining', 0.99), ('gradients', 0.57), ('probing', 0.49)
)
SELECT model, technique, n_runs,
       ROUND(p1, 3) AS accuracy_at_1,
       ROUND(share_2, 3) AS accuracy_at_2,
       ROUND(chance_1, 3) AS chance_at_1,
       ROUND(chance_2, 3) AS chance_at_2,
       ROUND(share_2 / chance_2, 2) AS times_chance_at_2,
       ROUND(on_top, 3) AS pair_on_top,
       ROUND(chance_on_top, 3) AS chance_pair_on_top,
       ROUND((p1 + z * z / (2 * n) - z * SQRT(p1 * (1 - p1) / n + z * z / (4 * n * n))) / (1 + z * z / n), 3)
           AS at_1_low,
       ROUND((p1 + z * z / (2 * n) + z * SQRT(p1 * (1 - p1) / n + z * z / (4 * n * n))) / (1 + z * z / n), 3)
           AS at_1_high,
       ROUND((p2 + z * z / (2 * n) - z * SQRT(p2 * (1 - p2) / n + z * z / (4 * n * n))) / (1 + z * z / n), 3)
           AS at_2_low,
       ROUND((p2 + z * z / (2 * n) + z * SQRT(p2 * (1 - p2) / n + z * z / (4 * n * n))) / (1 + z * z / n), 3)
           AS at_2_high,
       ROUND((p1 - chance_1) / (1 - chance_1), 3) AS normalised_at_1,
       ROUND((p2 - chance_2) / (1 - chance_2), 3) AS normalised_at_2,
       published_at_2,
       ROUND(1 / 6, 3) AS published_chance_at_2,
       ROUND((published_at_2 - 1 / 6) / (1 - 1 / 6), 3) AS published_normalised_at_2
FROM wilson LEFT JOIN published USING (technique)
ORDER BY model, accuracy_at_2 DESC, technique;
