-- Can the study's numbers be believed? Each check with its value, threshold, pass or warn, and what to change (raymem/checks.py).
SELECT task, model, seed, check_name, ROUND(value, 4) AS value, ROUND(threshold, 4) AS threshold,
       status, message
FROM checks
ORDER BY status DESC, task, model, seed, check_name;
