-- Neurons, deletion test: accuracy on the memorised examples and on clean held-out ones with each technique's top p% of FFN units dropped.
-- Per model, kind of target (the noisy fine-tuned model, or the planted control models)
-- and technique, averaged over seeds and planted sets; `random` is a random set of the same
-- size (the floor). forgotten: memorised accuracy lost against percent 0; heldout_lost:
-- held-out accuracy lost. A technique localises well when it forgets much and loses little.
WITH rows AS (
    SELECT model, CASE WHEN target = 'noisy' THEN 'noisy' ELSE 'planted' END AS kind,
           task, seed, target, technique, percent, n_units, memorised_acc, heldout_acc
    FROM neuron_deletion
), based AS (
    SELECT r.*, b.memorised_acc AS memorised_base, b.heldout_acc AS heldout_base
    FROM rows r JOIN rows b ON b.percent = 0 AND (r.task, r.model, r.seed, r.target, r.technique)
                                                = (b.task, b.model, b.seed, b.target, b.technique)
)
SELECT model, kind, technique, percent, COUNT(*) AS n_runs, ROUND(AVG(n_units), 1) AS n_units,
       ROUND(AVG(memorised_acc), 3) AS memorised_acc, ROUND(AVG(heldout_acc), 3) AS heldout_acc,
       ROUND(AVG(memorised_base - memorised_acc), 3) AS forgotten,
       ROUND(AVG(heldout_base - heldout_acc), 3) AS heldout_lost
FROM based
GROUP BY model, kind, technique, percent
ORDER BY model, kind, percent, forgotten DESC, technique;
