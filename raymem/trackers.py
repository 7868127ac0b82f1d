"""Experiment trackers: an MLflow and a Weights & Biases run per Tune trial of a study.

Tune's own logger callbacks do the logging (ray.air.integrations: MLflowLoggerCallback,
WandbLoggerCallback), in the driver; raymem adds each trial's stage, task, model, seed and
trial id as MLflow tags and W&B config and tags, so a tracker's runs can be matched with
the study's tables. Each tracker's package is an extra (`pip install 'raymem[mlflow]'`,
`'raymem[wandb]'`): a study that names a tracker whose package is missing stops while
planning, before anything runs.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager

from raymem.config import Trackers
from raymem.errors import ConfigError

# tracker -> (module it imports, extra that installs it)
PACKAGES = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
# The raymem parameters that tell a study's trials apart, as tags.
TAG_PARAMS = ("task", "model", "seed", "variant", "technique")


def check_trackers(trackers: Trackers) -> None:
    """Every tracker the study names has its package installed."""
    for name, (module, extra) in PACKAGES.items():
        if getattr(trackers, name) is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"trackers.{name}: the {module} package is not installed: "
                              f"pip install 'raymem[{extra}]' (or remove trackers.{name})")


def trial_tags(config: dict) -> dict[str, str]:
    """A Tune trial's raymem identity (its config holds the raymem trial: raymem.schedule)."""
    trial = config.get("trial")
    if not trial:  # not a raymem trial
        return {}
    spec = trial["spec"]
    tags = {"study": spec["study"], "stage": spec["stage"], "trial_id": trial["trial_id"]}
    tags |= {k: str(spec["params"][k]) for k in TAG_PARAMS if spec["params"].get(k) not in (None, "")}
    return tags


def _label(config: dict, fallback: str) -> str:
    return config.get("trial", {}).get("label", fallback)


def tracker_callbacks(trackers: Trackers, study: str) -> list:
    """The Tune callbacks of the trackers the study names (none: an empty list)."""
    check_trackers(trackers)
    callbacks = []
    if trackers.mlflow is not None:
        callbacks.append(_mlflow_callback(trackers.mlflow, study))
    if trackers.wandb is not None:
        callbacks.append(_wandb_callback(trackers.wandb, study))
    return callbacks


def _mlflow_callback(settings, study: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class RaymemMLflow(MLflowLoggerCallback):
        """One run per trial, named by its label, tagged with its raymem identity; its
        parameters are the raymem trial's (Tune's whole config would repeat them nested)."""

        def log_trial_start(self, trial):
            if trial not in self._trial_runs:
                run = self.mlflow_util.start_run(tags={**self.tags, **trial_tags(trial.config)},
                                                 run_name=_label(trial.config, str(trial)))
                self._trial_runs[trial] = run.info.run_id
            spec = trial.config.get("trial", {}).get("spec")
            self.mlflow_util.log_params(run_id=self._trial_runs[trial],
                                        params_to_log=spec["params"] if spec else trial.config)

    if (settings.tracking_uri or "").startswith("file:"):
        # MLflow 3 refuses its file store unless asked; a file: URI in the study file asks
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return RaymemMLflow(tracking_uri=settings.tracking_uri, experiment_name=settings.experiment or study)


@contextmanager
def _environ(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wandb_callback(settings, study: str):
    from ray.air.integrations.wandb import WandbLoggerCallback

    class RaymemWandb(WandbLoggerCallback):
        """One run per trial, named by its label; its raymem identity as config (`raymem`) and
        tags (stage, task, seed)."""

        def setup(self, *args, **kwargs):
            if self.kwargs["mode"] == "online":
                super().setup(*args, **kwargs)
            else:  # Tune asks for an API key unless WANDB_MODE says no run goes online
                with _environ(WANDB_MODE=self.kwargs["mode"]):
                    super().setup(*args, **kwargs)

        def _start_logging_actor(self, trial, exclude_results, **init):
            tags = trial_tags(trial.config)
            init["config"] = {**init.get("config", {}), "raymem": tags}
            init["name"] = _label(trial.config, init.get("name") or str(trial))
            init["tags"] = [f"{k}={tags[k]}" for k in ("stage", "task", "seed") if k in tags]
            super()._start_logging_actor(trial, exclude_results, **init)

    options = {"mode": settings.mode}
    if settings.entity:
        options["entity"] = settings.entity
    if settings.dir:
        os.makedirs(settings.dir, exist_ok=True)  # W&B writes under it, and wants it there
        options["dir"] = os.path.abspath(settings.dir)
    return RaymemWandb(project=settings.project or os.environ.get("WANDB_PROJECT") or study,
                       group=settings.group, **options)
