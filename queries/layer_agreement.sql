-- Do the techniques agree on which layers hold memorisation? Pearson correlation between techniques of their layer scores, per model and pooled over models (Dankers & Titov's technique agreement on layer-wise weights).
-- Over every (task, seed, layer) of the studied pairs (control pairs left out) where both
-- techniques scored the layer; a layer score is the technique's share of memorisation there.
WITH scores AS (
    SELECT task, model, seed, technique, layer, score FROM layer_scores
    WHERE pair = '' AND score IS NOT NULL AND NOT isnan(score)
),
paired AS (
    SELECT a.model, a.technique AS technique_a, b.technique AS technique_b, a.score AS x, b.score AS y
    FROM scores a JOIN scores b
      ON a.task = b.task AND a.model = b.model AND a.seed = b.seed AND a.layer = b.layer
     AND a.technique < b.technique
)
SELECT model, technique_a, technique_b, COUNT(*) AS n_layers, ROUND(CORR(x, y), 3) AS pearson
FROM (SELECT * FROM paired UNION ALL SELECT 'ALL' AS model, technique_a, technique_b, x, y FROM paired)
GROUP BY model, technique_a, technique_b ORDER BY model = 'ALL', model, technique_a, technique_b;
