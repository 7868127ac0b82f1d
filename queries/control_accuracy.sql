-- Control setup: how often each technique's top one (two) layers fall in the layer pair where memorisation was planted.
-- As published (Dankers & Titov, 2024): accuracy@1, the top layer lies in the pair (chance
-- 2/L); accuracy@2, the share of the top two layers that lie in the pair (chance 2/L).
-- pair_on_top, stricter: both planted layers score above every other layer (chance
-- 1/C(L,2)). Ties earn nothing. The planted pairs are {1,2}, {L/2,L/2+1} and {L-1,L} by default.
SELECT model, technique, COUNT(*) AS n_runs,
       ROUND(AVG(hit_at_1::DOUBLE), 3) AS accuracy_at_1,
       ROUND(AVG(hit_at_2::DOUBLE), 3) AS accuracy_at_2,
       ROUND(AVG(chance_at_1), 3) AS chance_at_1,
       ROUND(AVG(chance_at_2), 3) AS chance_at_2,
       ROUND(AVG(hit_at_2::DOUBLE) / AVG(chance_at_2), 2) AS times_chance_at_2,
       ROUND(AVG(pair_on_top::DOUBLE), 3) AS pair_on_top,
       ROUND(AVG(chance_pair_on_top), 3) AS chance_pair_on_top
FROM control_accuracy
GROUP BY model, technique ORDER BY model, accuracy_at_2 DESC, technique;
