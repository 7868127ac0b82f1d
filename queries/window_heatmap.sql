-- Window errors of layer swapping and retraining per window (start, size), averaged over seeds: the heatmap data, with the clean accuracy beside (swapping: the clean training examples under the swap; retraining: held-out clean examples after it).
SELECT task, model, technique, window_start, window_end - window_start + 1 AS window_size,
       ROUND(AVG(error), 4) AS error, ROUND(AVG(noisy_acc), 4) AS noisy_acc,
       ROUND(AVG(clean_acc), 4) AS clean_acc, COUNT(*) AS n_seeds
FROM window_scores
WHERE pair = ''
GROUP BY ALL ORDER BY task, model, technique, window_size, window_start;
