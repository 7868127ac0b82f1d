-- Memorisation centre of gravity (M-CoG) per task and model, by technique and averaged over techniques.
-- M-CoG = sum_l l * w_l / sum_l w_l over layers 1..L of a technique's layer scores; the mean
-- over seeds is reported with its spread. 'mean' averages the techniques of each seed first.
-- Control-setup models (pair <> '') are left out: see control_accuracy.
WITH per_seed AS (
    SELECT task, model, seed, technique, mcog FROM mcog WHERE pair = ''
    UNION ALL
    SELECT task, model, seed, 'mean' AS technique, AVG(mcog) FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) GROUP BY task, model, seed
)
SELECT task, model, technique, COUNT(*) AS n_seeds,
       ROUND(AVG(mcog), 3) AS mcog, ROUND(STDDEV_SAMP(mcog), 3) AS mcog_sd
FROM per_seed GROUP BY task, model, technique
ORDER BY task, model, technique = 'mean', technique;
