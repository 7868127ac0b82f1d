-- Control setup: how often each technique's top one (two) layers fall in the layer pair where memorisation was planted.
-- hit@1: the top layer is one of the pair (chance 2/L); hit@2: the top two layers are the
-- pair (chance 1/C(L,2)). The planted pairs are {1,2}, {L/2,L/2+1} and {L-1,L} by default.
SELECT model, technique, COUNT(*) AS n_runs,
       ROUND(AVG(hit_at_1::DOUBLE), 3) AS accuracy_at_1,
       ROUND(AVG(hit_at_2::DOUBLE), 3) AS accuracy_at_2,
       ROUND(AVG(chance_at_1), 3) AS chance_at_1,
       ROUND(AVG(chance_at_2), 3) AS chance_at_2,
       ROUND(AVG(hit_at_2::DOUBLE) / AVG(chance_at_2), 2) AS times_chance_at_2
FROM control_accuracy
GROUP BY model, technique ORDER BY model, accuracy_at_2 DESC, technique;
