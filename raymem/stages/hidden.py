"""Hidden states, once per localisation pair: the pooled output of the embeddings and of every
layer of the noisy model's final checkpoint (`checkpoint`), for each training example,
saved as (L+1, N, H).

Planned by the localisation stage (raymem/stages/localise.py, `plan_pair`) for the
techniques that read them (probing, centroids). A trial of its own, so it starts as soon
as its fine-tuning trial is done, on the resources of `localise.hidden_resources`.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from raymem.localise.layers import pooled_hidden_states
from raymem.localise.technique import CHECKPOINTS, HIDDEN_FILE
from raymem.runtime import Runtime
from raymem.train import encode_split, train_split
from raymem.trial import Tables, Trial

STAGE = "hidden"
WHERE = "tune"
BATCH_SIZE = 64


def run(trial: Trial, runtime: Runtime) -> Tables:
    p = trial.params
    memorised_trial, examples_trial = trial.needs  # as plan_pair lists them
    train = train_split(runtime.store, examples_trial)
    tokenizer = runtime.load_tokenizer(p["model"], p["max_length"])
    model = runtime.load_checkpoint(memorised_trial, CHECKPOINTS[p["checkpoint"]])
    data = encode_split(tokenizer, train, np.zeros(train.height, dtype=np.int64), p["max_length"])
    batches = []
    with torch.inference_mode(), runtime.autocast():
        for start in range(0, len(data), BATCH_SIZE):
            batch = runtime.to_device(data.batch(list(range(start, min(start + BATCH_SIZE, len(data))))))
            batches.append(pooled_hidden_states(model, batch).float().cpu().numpy())
    hidden = np.concatenate(batches, axis=1)  # (L+1, N, H), in example-id order
    buffer = io.BytesIO()
    np.save(buffer, hidden.astype(np.float32), allow_pickle=False)
    runtime.store.put_bytes(buffer.getvalue(), "checkpoints", trial.trial_id, HIDDEN_FILE)
    return {}

