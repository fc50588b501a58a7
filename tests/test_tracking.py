"""MLflow records on a real SQLite store: parent reuse, trial runs and the state mapping."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.errors import UserError
from pipeline.tracking import RUN_STATUS, Tracker, check_uri, resolve_uri


def make_tracker(workdir, study="s") -> Tracker:
    return Tracker(TrackingConfig(), study)


def test_tracker_creates_nothing_until_parent(workdir):
    tracker = make_tracker(workdir)

    assert tracker.experiment_id is None
    assert MlflowClient(tracking_uri=tracker.uri).get_experiment_by_name("s") is None


def test_start_parent_reused_on_rerun(workdir):
    first = make_tracker(workdir).start_parent("postgresql://user:secret@db/optuna", {"a": 1})
    tracker = make_tracker(workdir)
    second = tracker.start_parent("postgresql://user:secret@db/optuna", {"a": 2})

    assert first == second
    run = tracker.client.get_run(first)
    assert run.data.tags["optuna.storage"] == "postgresql://user:***@db/optuna"
    assert run.data.tags["optuna.study_name"] == "s"
    assert tracker.client.get_experiment(run.info.experiment_id).artifact_location == (workdir / "mlruns" / "artifacts").as_uri()


@pytest.mark.parametrize(("state", "status"), sorted(RUN_STATUS.items()))
def test_end_trial_maps_state_to_status(workdir, state, status):
    tracker = make_tracker(workdir)
    parent = tracker.start_parent("sqlite:///x.db", {})
    run_id = tracker.start_trial(parent, 4, {"conv1.kernel_initializer": "he_normal"}, seed=7)
    tracker.log_epoch(run_id, 0, {"val_accuracy": 0.5})
    tracker.end_trial(run_id, state, pruned_at_epoch=0 if state == "PRUNED" else None, fail_reason="boom" if state == "FAIL" else None)

    run = tracker.client.get_run(run_id)
    assert run.info.status == status
    assert run.info.run_name == "trial-4"
    assert run.data.tags["optuna.state"] == state
    assert run.data.tags["optuna.trial_number"] == "4"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["conv1.kernel_initializer"] == "he_normal"
    assert ("optuna.pruned_at_epoch" in run.data.tags) == (state == "PRUNED")
    assert ("optuna.fail_reason" in run.data.tags) == (state == "FAIL")


def test_start_trial_reuses_run_of_same_number(workdir):
    tracker = make_tracker(workdir)
    parent = tracker.start_parent("sqlite:///x.db", {})

    assert tracker.start_trial(parent, 0, {}, 0) == tracker.start_trial(parent, 0, {}, 0)


def test_resolve_uri_relative(workdir):
    assert resolve_uri("sqlite:///mlruns/mlflow.db") == f"sqlite:///{workdir}/mlruns/mlflow.db"
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns", "ftp://host/x"])
def test_check_uri_rejects(uri):
    with pytest.raises(UserError, match="is not supported"):
        check_uri(uri)


def test_tracker_unreachable_server(workdir):
    with pytest.raises(UserError, match="could not be opened"):
        Tracker(TrackingConfig(uri="http://127.0.0.1:9"), "s")
