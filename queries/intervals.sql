-- 95% bootstrap intervals of the headline numbers: counterfactual AUROC, PreCog's Spearman with correctness, M-CoG per technique, and the correlations across tasks (model_agreement, technique_agreement, generalisation_correlation).
-- Built with the database (raymem/intervals.py): 1,000 percentile-bootstrap resamples of the
-- unit each number is over (`resampled`: examples; tasks for the correlations across tasks);
-- M-CoG's is a t-interval over seeds (a bootstrap over 3 or 4 seeds under-covers). One seed,
-- or fewer than 3 tasks, has no interval.
-- analysis: one of them, or all.
-- params: analysis=all
SELECT analysis, task, model, key, ROUND(estimate, 3) AS estimate, ROUND(low, 3) AS low,
       ROUND(high, 3) AS high, resampled, n_units
FROM intervals
WHERE $analysis = 'all' OR analysis = $analysis
ORDER BY analysis, task, model, key;
