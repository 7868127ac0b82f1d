"""Trials released as their inputs finish: one Tune experiment for a whole study, no stage barriers.

A Tune `Searcher` holds the study's trials. Tune asks it for the next trial whenever it can
place one; it answers with the ready trial (every trial it `needs` is done) that heads the
longest chain of work still to come, or with nothing for now while the ready ones are all
out. So a pair's localisation starts when its two fine-tuning trials end, not when the last
training trial of the study does, and the trials on the critical path go first.

Driver steps (the summaries: a few shard reads each) run in the driver as soon as they are
ready, between Tune's requests. A trial whose inputs failed is never released; it is
reported as blocked.

Tune's default variant generator would instead deep-copy the whole list of trials once per
trial (quadratic in the sweep's size); the searcher hands Tune one small config at a time.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable

from ray.tune.search import Searcher

from raymem.trial import Trial

DRIVER_STAGES = ("counterfactual-summary", "localise-summary")


def relative_cost(trial: Trial) -> float:
    """A rough duration, in epochs over a training set, only to order ready trials."""
    p = trial.params
    epochs = (p.get("settings") or {}).get("epochs") or 10  # 10 where a search chooses them
    if trial.stage == "control":
        return 2.0 * epochs  # two tasks per step
    if trial.stage == "finetune":
        return float(epochs)
    if trial.stage == "counterfactual":
        return 0.5 * epochs  # half the training set
    if trial.stage == "localise" and "retrain" in p:
        windows = p["n_layers"] - p["start"] + 1  # the windows of one start layer
        return 0.5 * p["retrain"]["epochs"] * windows
    if trial.stage == "neurons":
        return neuron_cost(p)
    if trial.stage in DRIVER_STAGES:
        return 0.0
    return 1.0  # hidden states, swapping, gradients, probing, centroids: about an epoch


# A neuron trial's techniques in fine-tuning epochs, as measured in studies/neurons.yaml on
# raymem-mini (a 20-epoch fine-tuning trial 40 s; on its 59 memorised examples Zero-Out 82 s
# before it replayed the lower layers, IG 7 s at 20 steps; hard concrete 28 s and slimming
# 16 s at 300 steps). Zero-Out's share grows with the model's units, which a trial's
# parameters do not hold: the progress line reweighs the stage by what its first trials
# took (raymem/sweep.py). The per-example ones scale with `scored_examples` where it is set.
MEASURED_EXAMPLES = 60
NEURON_EPOCHS = {"activations": lambda p: 0.1, "zero_out": lambda p: 30.0 * _scored_share(p),
                 "integrated_gradients": lambda p: 0.18 * p["ig_steps"] * _scored_share(p),
                 "slimming": lambda p: p["slim_epochs"] / 38, "hard_concrete": lambda p: p["hc_epochs"] / 21}


def _scored_share(p: dict) -> float:
    return min(1.0, (p.get("scored_examples") or MEASURED_EXAMPLES) / MEASURED_EXAMPLES)


def neuron_cost(p: dict) -> float:
    """A neuron trial: its techniques (the mask techniques at their most steps), plus
    planting the units and the deletion test where it plants them (about 20 s there: it
    stops early, well short of its most epochs)."""
    planting = 0.05 * p["plant_epochs"] if "planted_layers" in p else 0.0
    return planting + sum(NEURON_EPOCHS[name](p) for name in p["techniques"])


def chain_lengths(trials: list[Trial]) -> dict[str, float]:
    """Per trial, its cost plus the longest chain of trials that wait on it (its 'bottom
    level' in list scheduling): the longer, the sooner it should start."""
    by_id = {t.trial_id: t for t in trials}
    waiting: dict[str, list[str]] = {t.trial_id: [] for t in trials}
    for t in trials:
        for need in t.needs:
            if need in waiting:
                waiting[need].append(t.trial_id)
    length: dict[str, float] = {}
    for t in reversed(trials):  # a plan lists every trial after the ones it needs
        length[t.trial_id] = relative_cost(t) + max((length[w] for w in waiting[t.trial_id]), default=0.0)
    return {i: length[i] for i in by_id}


class ReadyFirst(Searcher):
    """Tune's source of trials: ready ones, longest chain first (see the module docstring).

    `done` are the ids finished before the sweep; `run_in_driver(trial)` runs a driver step
    and says whether it succeeded. Each trial counts the inputs it still waits for, and a
    finished trial counts down those of the trials waiting on it, so a release costs
    O(log n) however large the study (a scan of every waiting trial per release would
    cost hours at the published grid's 48,000 trials).

    `limit` caps the Tune trials one experiment releases: Tune keeps every trial's state
    until its experiment ends, so the sweep runs a long study as a series of experiments of
    at most `limit` trials (`capped` says this one stopped there)."""

    def __init__(self, trials: list[Trial], done: set[str], run_in_driver: Callable[[Trial], bool],
                 limit: int | None = None):
        super().__init__()
        self.limit, self.released = limit, 0
        order = chain_lengths(trials)
        # longest chain first; among equal chains, the plan's order
        self.rank = {t.trial_id: (-order[t.trial_id], i) for i, t in enumerate(trials)}
        self.done, self.failed = set(done), set()
        self.waiting = {t.trial_id: t for t in trials if t.trial_id not in done}
        self.unmet: dict[str, int] = {}  # trial id -> inputs not done yet
        self.waiting_on: dict[str, list[str]] = defaultdict(list)  # input -> trials waiting on it
        self.ready: list[tuple[tuple[float, int], str]] = []  # a heap of (rank, trial id)
        for trial_id, trial in self.waiting.items():
            missing = {n for n in trial.needs if n not in self.done}
            self.unmet[trial_id] = len(missing)
            for need in missing:
                self.waiting_on[need].append(trial_id)
            if not missing:
                heapq.heappush(self.ready, (self.rank[trial_id], trial_id))
        self.running: dict[str, Trial] = {}  # Tune's trial id -> the raymem trial
        self.run_in_driver = run_in_driver

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def _finished(self, trial_id: str, ok: bool) -> None:
        (self.done if ok else self.failed).add(trial_id)
        for waiting in self.waiting_on.pop(trial_id, []) if ok else []:
            self.unmet[waiting] -= 1
            if self.unmet[waiting] == 0:
                heapq.heappush(self.ready, (self.rank[waiting], waiting))

    def _ready(self) -> Trial | None:
        """The first ready trial; driver steps run on the way."""
        while self.ready:
            trial = self.waiting.pop(heapq.heappop(self.ready)[1])
            if trial.stage not in DRIVER_STAGES:
                return trial
            self._finished(trial.trial_id, self.run_in_driver(trial))
        return None

    @property
    def capped(self) -> bool:
        return self.limit is not None and self.released >= self.limit

    def suggest(self, trial_id: str):
        trial = None if self.capped else self._ready()
        if trial is None:
            # nothing ready: more may be once a running trial ends; if none runs, the rest
            # wait on failed trials and never will be
            return None if self.running else Searcher.FINISHED
        self.running[trial_id] = trial
        self.released += 1
        return {"trial": {"trial_id": trial.trial_id, "label": trial.label(), "spec": trial.to_config()}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.running.pop(trial_id)
        self._finished(trial.trial_id, not error and (result or {}).get("status") == "ok")

    def __getstate__(self) -> dict:
        # Tune pickles its configuration (searcher included) for Tuner.restore, which raymem
        # does not use; the driver callback may hold what cannot be pickled.
        return {k: v for k, v in self.__dict__.items() if k != "run_in_driver"}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to keep: a rerun finds what is done by the store's completion markers."""

    def restore(self, checkpoint_path: str) -> None:
        """See `save`."""

    @property
    def blocked(self) -> list[Trial]:
        """Trials never released: something they need failed."""
        return list(self.waiting.values())
