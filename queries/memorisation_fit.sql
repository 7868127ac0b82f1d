-- How well each fine-tuned model fits its noisy and clean training examples, per checkpoint.
-- At the "memorised" checkpoint of the noisy variant, accuracy on the noisy examples (against
-- their perturbed labels) should be near 1: the model has memorised them.
SELECT pr.task, pr.model, pr.variant, pr.checkpoint, MIN(pr.epoch) AS epoch, e.noisy,
       COUNT(DISTINCT pr.example_id) AS n_examples,
       ROUND(AVG(pr.correct::DOUBLE), 4) AS train_accuracy
FROM predictions pr
JOIN examples e USING (task, model, example_id)
WHERE pr.split = 'train'
GROUP BY pr.task, pr.model, pr.variant, pr.checkpoint, e.noisy
ORDER BY pr.task, pr.model, pr.variant, pr.checkpoint DESC, e.noisy;
