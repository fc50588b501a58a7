"""Everything MLflow: one experiment and parent run per study, one nested run per trial.

This is the one place that maps Optuna trial states to MLflow run statuses. Names here
are a contract that the MLflow UI, ``pipeline.export`` and the tests rely on.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from pipeline.config import TrackingConfig, absolute_path, check_writable_folder, redact_url
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

ROLE_TAG = "pipeline.role"
STUDY_TAG = "optuna.study_name"
STORAGE_TAG = "optuna.storage"
TRIAL_NUMBER_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"
PRUNED_AT_TAG = "optuna.pruned_at_epoch"
FAIL_REASON_TAG = "optuna.fail_reason"
SEED_TAG = "trial.seed"
PRUNE_REASON_TAG = "optuna.prune_reason"
INIT_VERDICT_TAG = "init.verdict"

# Optuna's final trial states and the MLflow run status that shows each in the UI.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

_MAX_TAG_LENGTH = 5000
SERVER_TIMEOUT_S = 10


def resolve_uri(uri: str) -> str:
    """Make a relative ``sqlite:///`` path absolute against the start directory."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:":
        return uri

    path = uri[len(prefix):]
    if os.path.isabs(path):
        return uri

    return prefix + absolute_path(path)


def check_uri(uri: str) -> None:
    """Reject a tracking URI that cannot work, before anything is created."""
    schemes = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://", "mysql+pymysql://", "http://", "https://", "databricks")
    if not uri.startswith(schemes):
        raise UserError(
            f"tracking.uri {uri!r} is not supported; use a database URI such as "
            f"sqlite:///mlruns/mlflow.db or the http(s) address of an MLflow tracking server. "
            f"MLflow refuses a plain folder such as ./mlruns as its store."
        )

    if uri.startswith("sqlite:///"):
        check_writable_folder(uri[len("sqlite:///"):], "tracking.uri")


def _check_server(uri: str) -> None:
    """Ask the tracking server's health endpoint, because MLflow's own retries take minutes."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise UserError(
            f"The MLflow tracking server at {redact_url(uri)} could not be opened: {error}. "
            f"Start the server or fix tracking.uri."
        ) from error


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TAG_LENGTH else text[: _MAX_TAG_LENGTH - 3] + "..."


class Tracker:
    """Writes a study's records through an explicit ``MlflowClient``, never the global run stack."""

    def __init__(self, config: TrackingConfig, study_name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(config.uri)
        check_uri(self.uri)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)

        if self.uri.startswith(("http://", "https://")):
            _check_server(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = config.experiment or study_name
        self.study_name = study_name
        self.artifact_location = config.artifact_location
        self.experiment_id = self._existing_experiment()

    def _existing_experiment(self) -> str | None:
        """Look the experiment up, which also proves the store can be reached, creating nothing."""
        try:
            existing = self.client.get_experiment_by_name(self.experiment_name)
        except Exception as error:  # MLflow wraps database and HTTP failures in several types.
            raise UserError(
                f"The MLflow store at {redact_url(self.uri)} could not be opened: {error}. "
                f"Check tracking.uri."
            ) from error

        if existing is None:
            return None

        requested = self.artifact_location
        if requested and "://" not in requested:
            requested = Path(absolute_path(requested)).as_uri()
        if requested and existing.artifact_location != requested:
            logger.warning(
                "MLflow experiment %r keeps its artifact location %s; tracking.artifact_location=%s "
                "applies only to new experiments",
                self.experiment_name, existing.artifact_location, requested,
            )

        if existing.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment {self.experiment_name!r} is deleted; restore it with "
                f"`mlflow experiments restore` or choose another study.name."
            )
        return existing.experiment_id

    def _ensure_experiment(self) -> str:
        if self.experiment_id is not None:
            return self.experiment_id

        location = self.artifact_location or None
        if location and "://" not in location:
            location = Path(absolute_path(location)).as_uri()
        self.experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        return self.experiment_id

    def find_parent(self) -> str | None:
        if self.experiment_id is None:
            return None

        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{self.study_name}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def start_parent(self, storage_url: str, config: Mapping[str, Any]) -> str:
        """Resume the study's parent run, or create it, and store the resolved config."""
        run_id = self.find_parent()
        if run_id is None:
            self._ensure_experiment()
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study_name,
                tags={ROLE_TAG: "study", STUDY_TAG: self.study_name, STORAGE_TAG: redact_url(storage_url)},
            )
            run_id = run.info.run_id
            logger.info("Created MLflow parent run %s for study %r", run_id, self.study_name)
        else:
            self.client.update_run(run_id, status="RUNNING")
            logger.info("Resumed MLflow parent run %s for study %r", run_id, self.study_name)

        self.client.log_dict(run_id, dict(config), "config.yaml")
        return run_id

    def find_trial_run(self, parent_id: str, trial_number: int) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{TRIAL_NUMBER_TAG}` = '{trial_number}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_trial(self, parent_id: str, trial_number: int, params: Mapping[str, Any], seed: int) -> str:
        """Create the nested run of one trial with its params; reuse one left by a crash."""
        from mlflow.entities import Param

        run_id = self.find_trial_run(parent_id, trial_number)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"trial-{trial_number}",
                tags={
                    "mlflow.parentRunId": parent_id,
                    STUDY_TAG: self.study_name,
                    TRIAL_NUMBER_TAG: str(trial_number),
                    SEED_TAG: str(seed),
                },
            )
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
        return run_id

    def log_epoch(self, run_id: str, epoch: int, logs: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, epoch) for key, value in logs.items()]
        self.client.log_batch(run_id, metrics=metrics)

    def end_trial(
        self,
        run_id: str,
        state: str,
        value: float | None = None,
        pruned_at_epoch: int | None = None,
        fail_reason: str | None = None,
        prune_reason: str | None = None,
    ) -> None:
        """Tag the final Optuna state and close the run with the matching MLflow status.

        ``pruned_at_epoch`` counts from 0, and -1 means pruned before the first epoch.
        """
        from mlflow.entities import RunTag

        tags = [RunTag(STATE_TAG, state)]
        if pruned_at_epoch is not None:
            tags.append(RunTag(PRUNED_AT_TAG, str(pruned_at_epoch)))
        if prune_reason is not None:
            tags.append(RunTag(PRUNE_REASON_TAG, _clip(prune_reason)))
        if fail_reason is not None:
            tags.append(RunTag(FAIL_REASON_TAG, _clip(fail_reason)))
        self.client.log_batch(run_id, tags=tags)
        if value is not None:
            self.client.log_metric(run_id, "objective_value", value)
        self.client.set_terminated(run_id, status=RUN_STATUS[state])

    def end_parent(self, run_id: str, summary: Mapping[str, float], tags: Mapping[str, str], status: str) -> None:
        from mlflow.entities import Metric, RunTag

        timestamp = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(key, float(value), timestamp, 0) for key, value in summary.items()],
            tags=[RunTag(key, _clip(str(value))) for key, value in tags.items()],
        )
        self.client.set_terminated(run_id, status=status)

    def log_signal(self, run_id: str, metrics: Mapping[str, float], table: Mapping[str, list], verdict: str) -> None:
        """Log the signal-propagation check at initialization: metrics, a table and the verdict tag."""
        from mlflow.entities import Metric, RunTag

        timestamp = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(key, float(value), timestamp, 0) for key, value in metrics.items()],
            tags=[RunTag(INIT_VERDICT_TAG, verdict)],
        )
        self.client.log_dict(run_id, dict(table), "init_signal.json")

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        self.client.log_metric(run_id, key, float(value))

    def log_dict(self, run_id: str, content: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(content), artifact_file)
