-- Memorisation centre of gravity (M-CoG) per task and model, by technique and averaged over the paper's four techniques.
-- M-CoG = sum_l l * w_l / sum_l w_l over layers 1..L of a technique's layer scores; the mean
-- over seeds is reported with its spread. A seed whose technique placed nothing (M-CoG NaN)
-- is left out of that technique's mean, as of 'mean'; n_seeds counts the seeds used.
-- 'mean' averages swapping, retraining, gradients and probing within each seed first (as
-- Dankers & Titov, 2024); centroids is reported beside it, not inside it.
-- Control-setup models (pair <> '') are left out: see control_accuracy.
WITH centres AS (
    SELECT task, model, seed, technique, CASE WHEN isnan(mcog) THEN NULL ELSE mcog END AS mcog
    FROM mcog WHERE pair = ''
),
per_seed AS (
    SELECT task, model, seed, technique, mcog FROM centres
    UNION ALL
    SELECT task, model, seed, 'mean' AS technique, AVG(mcog) FROM centres
    WHERE technique IN ('swapping', 'retraining', 'gradients', 'probing')
    GROUP BY task, model, seed
)
SELECT task, model, technique, COUNT(mcog) AS n_seeds,
       ROUND(AVG(mcog), 3) AS mcog, ROUND(STDDEV_SAMP(mcog), 3) AS mcog_sd
FROM per_seed GROUP BY task, model, technique
ORDER BY task, model, technique = 'mean', technique;
