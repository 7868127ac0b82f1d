-- Do probing and the centroid analysis agree on when memorisation happens? Spearman correlation over (task, model) of the probing consolidation events with the centroid events (the original: memorisation with crossing, generalisation with initiation).
-- Each event is its mean layer over seeds (seeds without it left out); a (task, model) that
-- lacks either event is left out. Ties get average ranks.
WITH per_task AS (
    SELECT task, model, event, AVG(layer) AS layer FROM events
    WHERE pair = '' AND class_from IS NULL AND layer IS NOT NULL GROUP BY ALL
),
paired AS (
    SELECT p.task, p.model, p.event || ' vs ' || c.event AS events, p.layer AS x, c.layer AS y
    FROM per_task p JOIN per_task c USING (task, model)
    WHERE (p.event, c.event) IN (('probe_memorisation', 'crossing'), ('probe_initiation', 'initiation'))
),
ranked AS (
    SELECT *, RANK() OVER (PARTITION BY events ORDER BY x) + (COUNT(*) OVER (PARTITION BY events, x) - 1) / 2.0 AS rx,
              RANK() OVER (PARTITION BY events ORDER BY y) + (COUNT(*) OVER (PARTITION BY events, y) - 1) / 2.0 AS ry
    FROM paired
)
SELECT events, COUNT(*) AS n_task_models, ROUND(CORR(rx, ry), 3) AS spearman
FROM ranked GROUP BY ALL ORDER BY events;
