-- Counterfactual memorisation of the noisy (relabelled) and the clean training examples: the share of each group per mem bin, per task.
-- mem runs from -1 to 1; a bin is [bin_start, bin_start + bin_width), the last one closed.
-- Examples that every subset model trained on (or none did) have no mem and are left out.
-- params: bin_width=0.1 (0, 1]
WITH binned AS (
    SELECT c.task, c.model, CASE WHEN e.noisy THEN 'noisy' ELSE 'clean' END AS label,
           LEAST(FLOOR(ROUND(c.mem / $bin_width, 9)), CEIL(1 / $bin_width) - 1) * $bin_width AS bin_start
    FROM counterfactual c
    JOIN examples e USING (task, model, example_id)
    WHERE e.split = 'train' AND c.mem IS NOT NULL
)
SELECT task, model, label, ROUND(bin_start, 6) AS bin_start, ROUND(bin_start + $bin_width, 6) AS bin_end,
       COUNT(*) AS n_examples,
       ROUND(COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY task, model, label), 4) AS share
FROM binned GROUP BY task, model, label, bin_start ORDER BY task, model, label, bin_start;
