-- Control setup: how often each technique's top one (two) layers fall in the layer pair where memorisation was planted.
-- As published (Dankers & Titov, 2024): accuracy@1, the top layer lies in the pair (chance
-- 2/L); accuracy@2, the share of the top two layers that lie in the pair (chance 2/L).
-- pair_on_top, stricter: both planted layers score above every other layer (chance
-- 1/C(L,2)). Ties earn nothing. The planted pairs are {1,2}, {L/2,L/2+1} and {L-1,L} by default.
-- at_1_low/high and at_2_low/high: 95% Wilson intervals, over the runs for @1 and over the
-- runs' 2 x n_runs top-two places for @2 (a technique with few runs has a wide interval).
WITH counts AS (
    SELECT model, technique, COUNT(*) AS n_runs,
           SUM(hit_at_1::DOUBLE) AS hits_1, SUM(hit_at_2::DOUBLE) * 2 AS hits_2,
           AVG(hit_at_2::DOUBLE) AS share_2, AVG(chance_at_1) AS chance_1, AVG(chance_at_2) AS chance_2,
           AVG(pair_on_top::DOUBLE) AS on_top, AVG(chance_pair_on_top) AS chance_on_top
    FROM control_accuracy GROUP BY model, technique
), wilson AS (
    SELECT *, 1.959964 AS z,
           hits_1 / n_runs AS p1, hits_2 / (2 * n_runs) AS p2, n_runs AS n1, 2 * n_runs AS n2
    FROM counts
)
SELECT model, technique, n_runs,
       ROUND(p1, 3) AS accuracy_at_1,
       ROUND(share_2, 3) AS accuracy_at_2,
       ROUND(chance_1, 3) AS chance_at_1,
       ROUND(chance_2, 3) AS chance_at_2,
       ROUND(share_2 / chance_2, 2) AS times_chance_at_2,
       ROUND(on_top, 3) AS pair_on_top,
       ROUND(chance_on_top, 3) AS chance_pair_on_top,
       ROUND((p1 + z * z / (2 * n1) - z * SQRT(p1 * (1 - p1) / n1 + z * z / (4 * n1 * n1))) / (1 + z * z / n1), 3)
           AS at_1_low,
       ROUND((p1 + z * z / (2 * n1) + z * SQRT(p1 * (1 - p1) / n1 + z * z / (4 * n1 * n1))) / (1 + z * z / n1), 3)
           AS at_1_high,
       ROUND((p2 + z * z / (2 * n2) - z * SQRT(p2 * (1 - p2) / n2 + z * z / (4 * n2 * n2))) / (1 + z * z / n2), 3)
           AS at_2_low,
       ROUND((p2 + z * z / (2 * n2) + z * SQRT(p2 * (1 - p2) / n2 + z * z / (4 * n2 * n2))) / (1 + z * z / n2), 3)
           AS at_2_high
FROM wilson
ORDER BY model, accuracy_at_2 DESC, technique;
