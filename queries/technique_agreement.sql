-- Do the techniques agree on where memorisation sits? Spearman correlation of their M-CoG across tasks, per model and technique pair.
WITH per_task AS (
    SELECT model, technique, task, AVG(mcog) AS mcog FROM mcog WHERE pair = '' GROUP BY ALL
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY model, technique ORDER BY mcog)
                + (COUNT(*) OVER (PARTITION BY model, technique, mcog) - 1) / 2.0 AS r
    FROM per_task
)
SELECT a.model, a.technique AS technique_a, b.technique AS technique_b, COUNT(*) AS n_tasks,
       ROUND(CORR(a.r, b.r), 3) AS spearman
FROM ranked a JOIN ranked b ON a.model = b.model AND a.task = b.task AND a.technique < b.technique
GROUP BY ALL ORDER BY a.model, technique_a, technique_b;
