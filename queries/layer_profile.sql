-- Per-layer memorisation scores of each technique, normalised to sum to 1 per (task, model, seed, technique), averaged over seeds.
-- score_sd: their standard deviation over seeds (null with one seed).
SELECT task, model, technique, layer,
       ROUND(AVG(share), 4) AS score, ROUND(STDDEV_SAMP(share), 4) AS score_sd,
       COUNT(share) AS n_seeds  -- seeds whose scores placed something
FROM (
    SELECT task, model, seed, technique, layer,
           CASE WHEN SUM(score) OVER w > 0 THEN score / SUM(score) OVER w END AS share
    FROM layer_scores
    WHERE pair = ''  -- the studied models, not the control setup
    WINDOW w AS (PARTITION BY task, model, seed, technique)
)
GROUP BY task, model, technique, layer
ORDER BY task, model, technique, layer;
