-- Do the techniques agree on where memorisation sits? Spearman correlation of their M-CoG across tasks, per model and technique pair.
-- A technique's M-CoG of a task is its mean over seeds, leaving out NaN (no layer scored);
-- each pair of techniques is ranked on the tasks both placed, with average ranks for ties.
WITH per_task AS (
    SELECT model, technique, task, AVG(mcog) AS mcog FROM mcog
    WHERE pair = '' AND NOT isnan(mcog) GROUP BY ALL
),
paired AS (
    SELECT a.model, a.technique AS technique_a, b.technique AS technique_b, a.task,
           a.mcog AS x, b.mcog AS y
    FROM per_task a JOIN per_task b ON a.model = b.model AND a.task = b.task AND a.technique < b.technique
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY model, technique_a, technique_b ORDER BY x)
                + (COUNT(*) OVER (PARTITION BY model, technique_a, technique_b, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY model, technique_a, technique_b ORDER BY y)
                + (COUNT(*) OVER (PARTITION BY model, technique_a, technique_b, y) - 1) / 2.0 AS ry
    FROM paired
)
SELECT model, technique_a, technique_b, COUNT(*) AS n_tasks, ROUND(CORR(rx, ry), 3) AS spearman
FROM ranked GROUP BY ALL ORDER BY model, technique_a, technique_b;
