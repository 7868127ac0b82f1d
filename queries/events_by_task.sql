-- When does memorisation set in, per task? The centroid analysis's crossing and initiation layers and probing's consolidation events (probe_memorisation, probe_initiation), mean over seeds.
-- Pooled events of the studied pair; a seed without the event is left out of the mean and
-- counted in n_never. crossing: the last layer where the noisy examples cross to their new
-- class; initiation: the first layer from which the classes separate; probe_memorisation:
-- the first layer where a probe reads the noisy labels of the noisy examples better than
-- their original ones; probe_initiation: the first layer where the original labels of the
-- clean examples are read at 90% of the best layer's F1 above chance.
SELECT task, model, technique, event, COUNT(layer) AS n_seeds, COUNT(*) - COUNT(layer) AS n_never,
       ROUND(AVG(layer), 3) AS mean_layer, ROUND(STDDEV_SAMP(layer), 3) AS sd_layer
FROM events
WHERE pair = '' AND class_from IS NULL
GROUP BY ALL ORDER BY model, task, technique, event;
