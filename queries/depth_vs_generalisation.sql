-- Do tasks that generalise better memorise later? Mean M-CoG over techniques against mean counterfactual generalisation (gen) of the clean training examples, per task.
-- The M-CoG is mcog_by_task's 'mean': over the paper's four techniques of each seed (NaN left
-- out; centroids not among them), then over seeds.
WITH per_seed AS (
    SELECT task, model, seed, AVG(mcog) AS mcog FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) AND technique IN ('swapping', 'retraining', 'gradients', 'probing')
    GROUP BY task, model, seed
),
depth AS (
    SELECT task, model, AVG(mcog) AS mcog FROM per_seed GROUP BY task, model
),
generalisation AS (
    SELECT c.task, c.model, AVG(c.gen) AS mean_gen, AVG(c.mem) AS mean_mem
    FROM counterfactual c JOIN examples e USING (task, model, example_id)
    WHERE NOT e.noisy GROUP BY c.task, c.model
)
SELECT d.task, d.model, ROUND(d.mcog, 3) AS mcog, ROUND(g.mean_gen, 4) AS mean_gen,
       ROUND(g.mean_mem, 4) AS mean_mem
FROM depth d JOIN generalisation g USING (task, model)
ORDER BY d.model, d.mcog;
