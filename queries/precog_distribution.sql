-- Distribution of PreCog scores of planted and never-planted examples (share of examples per score bin).
-- params: bin_width=0.1 (0, 1]
WITH binned AS (
    SELECT p.model, p.k, e.planted_count,
           LEAST(FLOOR(ROUND(p.score / $bin_width, 9)), CEIL(1 / $bin_width) - 1) * $bin_width AS bin_start
    FROM precog p
    JOIN examples e USING (task, model, example_id)
    -- one row per example even where tasks share examples
    QUALIFY ROW_NUMBER() OVER (PARTITION BY p.model, p.k, p.example_id ORDER BY p.task) = 1
)
SELECT model, k, planted_count, ROUND(bin_start, 6) AS bin_start, COUNT(*) AS n_examples,
       ROUND(COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY model, k, planted_count), 4) AS share
FROM binned GROUP BY model, k, planted_count, bin_start ORDER BY model, k, planted_count, bin_start;
