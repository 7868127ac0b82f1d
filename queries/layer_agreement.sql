-- Do the techniques agree on which layers hold memorisation? Pearson correlation between techniques of their layer scores, per model and pooled over models (Dankers & Titov's technique agreement on layer-wise weights).
-- Over every (task, seed, layer) of the studied pairs (control pairs left out) where both
-- techniques scored the layer; a layer score is the technique's share of memorisation there.
-- The control models are left out (they plant memorisation; see control_accuracy).
-- pearson_low/high: approximate 95% Fisher-z interval (1 / sqrt(n - 3); null for n <= 3). A
-- seed's layer scores sum to one, so its layers are not independent: read it as too narrow.
WITH scores AS (
    SELECT task, model, seed, technique, layer, score FROM layer_scores
    WHERE pair = '' AND score IS NOT NULL AND NOT isnan(score)
),
paired AS (
    SELECT a.model, a.technique AS technique_a, b.technique AS technique_b, a.score AS x, b.score AS y
    FROM scores a JOIN scores b
      ON a.task = b.task AND a.model = b.model AND a.seed = b.seed AND a.layer = b.layer
     AND a.technique < b.technique
),
correlations AS (
    SELECT model, technique_a, technique_b, COUNT(*) AS n, CORR(x, y) AS r
    FROM (SELECT * FROM paired UNION ALL SELECT 'ALL' AS model, technique_a, technique_b, x, y FROM paired)
    GROUP BY model, technique_a, technique_b
),
fisher AS (
    SELECT *, CASE WHEN n > 3 AND NOT isnan(r) THEN atanh(GREATEST(LEAST(r, 0.999999), -0.999999)) END AS z,
           1 / SQRT(NULLIF(n - 3, 0)) AS se
    FROM correlations
)
SELECT model, technique_a, technique_b, n AS n_layers, ROUND(r, 3) AS pearson,
       ROUND(tanh(z - 1.959964 * se), 3) AS pearson_low, ROUND(tanh(z + 1.959964 * se), 3) AS pearson_high
FROM fisher ORDER BY model = 'ALL', model, technique_a, technique_b;
