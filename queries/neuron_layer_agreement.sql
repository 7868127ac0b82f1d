-- Neurons aggregated to layers: each neuron technique's layer profile (its unit scores summed per layer) against the layer techniques' scores.
-- Per (task, model, seed) of the noisy model, the Spearman correlation over layers between
-- a neuron technique's profile and a layer technique's scores (layer_scores of the studied
-- pair), beside both M-CoGs (layers 1-based). Needs localise and neurons in the same study
-- (studies/neurons.yaml runs swapping and gradients beside the neuron techniques).
WITH neuron AS (
    SELECT task, model, seed, technique AS neuron_technique, layer, score,
           RANK() OVER (PARTITION BY task, model, seed, technique ORDER BY score) AS r
    FROM neuron_layers WHERE target = 'noisy'
), layer AS (
    SELECT task, model, seed, technique AS layer_technique, layer, score,
           RANK() OVER (PARTITION BY task, model, seed, technique ORDER BY score) AS r
    FROM layer_scores WHERE pair = ''
), mcog AS (
    SELECT task, model, seed, technique, SUM(layer * score) / NULLIF(SUM(score), 0) AS mcog
    FROM (SELECT task, model, seed, technique, layer, score FROM neuron_layers WHERE target = 'noisy'
          UNION ALL SELECT task, model, seed, technique, layer, score FROM layer_scores WHERE pair = '')
    GROUP BY ALL
)
SELECT n.task, n.model, n.seed, n.neuron_technique, l.layer_technique,
       ROUND(CORR(n.r, l.r), 3) AS spearman,
       ROUND(ANY_VALUE(mn.mcog), 2) AS neuron_mcog, ROUND(ANY_VALUE(ml.mcog), 2) AS layer_mcog
FROM neuron n
JOIN layer l USING (task, model, seed, layer)
JOIN mcog mn ON (mn.task, mn.model, mn.seed, mn.technique) = (n.task, n.model, n.seed, n.neuron_technique)
JOIN mcog ml ON (ml.task, ml.model, ml.seed, ml.technique) = (l.task, l.model, l.seed, l.layer_technique)
GROUP BY n.task, n.model, n.seed, n.neuron_technique, l.layer_technique
ORDER BY n.task, n.model, n.seed, n.neuron_technique, l.layer_technique;
