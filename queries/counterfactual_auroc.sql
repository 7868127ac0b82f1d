-- How well counterfactual memorisation separates the noisy (relabelled) training examples from the clean ones: AUROC of mem, per task, overall and by annotator agreement.
-- AUROC = P(mem of a random noisy example > mem of a random clean one), from average ranks
-- (Mann-Whitney U); 0.5 is chance, 1 is perfect. Also the mean mem and gen of each group.
-- annotators: 'all'; 'unanimous' (annotator_confidence 1) and 'split' (below 1) where the
-- corpus says how its annotators agreed. A clean label the annotators disagreed on is one
-- the subset models that did not train on it often get wrong, so it scores a high mem
-- like a relabelled example: the 'split' rows show how much that lowers the AUROC.
-- Examples that every subset model trained on (or none did) have no mem and are left out.
WITH labelled AS (
    SELECT c.task, c.model, c.mem, c.gen, e.noisy,
           CASE WHEN e.annotator_confidence IS NULL THEN 'unknown'
                WHEN e.annotator_confidence >= 0.999 THEN 'unanimous' ELSE 'split' END AS annotators
    FROM counterfactual c
    JOIN examples e USING (task, model, example_id)
    WHERE e.split = 'train' AND c.mem IS NOT NULL
), grouped AS (
    SELECT task, model, 'all' AS annotators, mem, gen, noisy FROM labelled
    UNION ALL
    SELECT task, model, annotators, mem, gen, noisy FROM labelled WHERE annotators <> 'unknown'
), scored AS (
    SELECT *,
           RANK() OVER (PARTITION BY task, model, annotators ORDER BY mem)
             + (COUNT(*) OVER (PARTITION BY task, model, annotators, mem) - 1) / 2.0 AS mem_rank
    FROM grouped
)
SELECT task, model, annotators,
       COUNT(*) FILTER (WHERE noisy) AS n_noisy,
       COUNT(*) FILTER (WHERE NOT noisy) AS n_clean,
       ROUND((SUM(mem_rank) FILTER (WHERE noisy)
              - COUNT(*) FILTER (WHERE noisy) * (COUNT(*) FILTER (WHERE noisy) + 1) / 2.0)
             / (COUNT(*) FILTER (WHERE noisy) * COUNT(*) FILTER (WHERE NOT noisy)), 4) AS auroc_mem,
       ROUND(AVG(mem) FILTER (WHERE noisy), 4) AS mean_mem_noisy,
       ROUND(AVG(mem) FILTER (WHERE NOT noisy), 4) AS mean_mem_clean,
       ROUND(AVG(gen) FILTER (WHERE NOT noisy), 4) AS mean_gen_clean
FROM scored GROUP BY task, model, annotators
ORDER BY task, model, annotators <> 'all', annotators DESC;
