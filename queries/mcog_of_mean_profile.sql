-- M-CoG as the original computes it: of each technique's layer scores averaged over seeds first, per task and model, and averaged over the paper's four techniques ('mean').
-- The original (visualise_layer_swapping.ipynb, visualise_probing.ipynb) averages a
-- technique's per-layer scores over the model seeds and takes the M-CoG of that profile;
-- mcog_by_task averages the per-seed M-CoGs instead (with their spread). The two agree when
-- every seed's scores have the same total (gradients: normalised per seed); otherwise a seed
-- with larger scores weighs more here. Layers are numbered from 1 (the original's from 0:
-- subtract 1 to compare with its figures). 'mean' is over swapping, retraining, gradients and
-- probing, leaving out a technique that placed nothing; control-setup pairs are left out.
WITH profile AS (
    SELECT task, model, technique, layer, AVG(score) AS score, COUNT(*) AS n_seeds
    FROM layer_scores WHERE pair = '' AND score IS NOT NULL AND NOT isnan(score)
    GROUP BY ALL
),
centres AS (
    SELECT task, model, technique, MAX(n_seeds) AS n_seeds,
           SUM(layer * score) / NULLIF(SUM(score), 0) AS mcog
    FROM profile GROUP BY ALL
),
rows AS (
    SELECT * FROM centres
    UNION ALL
    SELECT task, model, 'mean' AS technique, MAX(n_seeds), AVG(mcog) FROM centres
    WHERE technique IN ('swapping', 'retraining', 'gradients', 'probing') AND mcog IS NOT NULL
    GROUP BY task, model
)
SELECT task, model, technique, n_seeds, ROUND(mcog, 3) AS mcog FROM rows
ORDER BY task, model, technique = 'mean', technique;
