-- How well counterfactual memorisation separates the noisy (relabelled) training examples from the clean ones: AUROC of mem, per task.
-- AUROC = P(mem of a random noisy example > mem of a random clean one), from average ranks
-- (Mann-Whitney U); 0.5 is chance, 1 is perfect. Also the mean mem and gen of each group.
WITH scored AS (
    SELECT c.task, c.model, c.mem, c.gen, e.noisy,
           RANK() OVER (PARTITION BY c.task, c.model ORDER BY c.mem)
             + (COUNT(*) OVER (PARTITION BY c.task, c.model, c.mem) - 1) / 2.0 AS mem_rank
    FROM counterfactual c
    JOIN examples e USING (task, model, example_id)
    WHERE e.split = 'train'
)
SELECT task, model,
       COUNT(*) FILTER (WHERE noisy) AS n_noisy,
       COUNT(*) FILTER (WHERE NOT noisy) AS n_clean,
       ROUND((SUM(mem_rank) FILTER (WHERE noisy)
              - COUNT(*) FILTER (WHERE noisy) * (COUNT(*) FILTER (WHERE noisy) + 1) / 2.0)
             / (COUNT(*) FILTER (WHERE noisy) * COUNT(*) FILTER (WHERE NOT noisy)), 4) AS auroc_mem,
       ROUND(AVG(mem) FILTER (WHERE noisy), 4) AS mean_mem_noisy,
       ROUND(AVG(mem) FILTER (WHERE NOT noisy), 4) AS mean_mem_clean,
       ROUND(AVG(gen) FILTER (WHERE NOT noisy), 4) AS mean_gen_clean
FROM scored GROUP BY task, model ORDER BY task, model;
