"""The best trial of a study as a search-space document that search accepts back."""

from __future__ import annotations

import datetime
from typing import Any

import optuna

from pipeline.errors import UserError
from pipeline.space import SearchSpace, sample_from_params, space_document


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Return the best complete trial, or raise ``UserError`` when the study has none."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        counts = {}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        raise UserError(
            f"Study {study.study_name!r} has no completed trial (trials by state: {counts or 'none'}); "
            f"run pipeline.search until at least one trial completes."
        )

    return study.best_trial


def best_document(study: optuna.Study, space: SearchSpace, storage: str) -> dict[str, Any]:
    """Return the best trial's choices as a space file, with its provenance."""
    trial = best_trial(study)
    try:
        sample = sample_from_params(space, trial.params)
    except KeyError as error:
        raise UserError(
            f"The best trial of study {study.study_name!r} has no parameter {error}; the search "
            f"space {space.path} does not match the one the study used. Set space= to that file."
        ) from error

    provenance = {
        "study": study.study_name,
        "storage": storage,
        "trial": trial.number,
        "value": trial.value,
        "metric": "val_accuracy",
        "seed": trial.user_attrs.get("seed"),
        "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        "trial_completed": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return space_document(space, sample, provenance)
