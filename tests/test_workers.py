"""Real worker processes: SIGKILL and restart, SIGTERM, and parallel workers on one study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import filelock
import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline.workers import (
    RETRY_OF_ATTR,
    WORKER_ATTR,
    TrialGate,
    lost_trials,
    recover_dead_workers,
    used_budget,
    worker_identity,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_command(colour_tree: str, study: str, n_trials: int, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.search",
        f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=8",
        f"train.epochs={epochs}", "train.progress=false", "study.pruner=none", "study.sampler=random",
        f"study.name={study}", f"study.n_trials={n_trials}", *extra,
    ]


def start_worker(command: list[str], folder, name: str) -> subprocess.Popen:
    log = open(folder / f"{name}.log", "w")
    return subprocess.Popen(
        command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )


def wait_for_epoch(folder, study_name: str, timeout_s: float = 240) -> None:
    """Wait until a trial of the study has logged at least one epoch to MLflow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db")
            experiment = client.get_experiment_by_name(study_name)
            if experiment is None:
                continue
            runs = client.search_runs([experiment.experiment_id], filter_string="metrics.val_accuracy >= 0")
            if runs:
                return
        except Exception:  # The store may be mid-creation; poll again.
            continue
    raise AssertionError(f"no trial of {study_name} logged an epoch within {timeout_s} s")


def load(folder, study_name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=storage or f"sqlite:///{folder}/mlruns/optuna.db")


def trial_runs(folder, study_name: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("pipeline.role") == "study"]
    trials = [run for run in runs if "optuna.trial_number" in run.data.tags]
    return parents, sorted(trials, key=lambda run: int(run.data.tags["optuna.trial_number"]))


def test_worker_killed_mid_epoch_then_resumed(tmp_path, colour_tree):
    command = worker_command(colour_tree, "killed", 2, 40, "study.retry_lost_trials=true")
    worker = start_worker(command, tmp_path, "first")
    wait_for_epoch(tmp_path, "killed")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)

    study = load(tmp_path, "killed")
    assert [trial.state.name for trial in study.trials] == ["RUNNING"]
    _, runs = trial_runs(tmp_path, "killed")
    assert [run.info.status for run in runs] == ["RUNNING"]

    restarted = subprocess.run(
        worker_command(colour_tree, "killed", 2, 2, "study.retry_lost_trials=true"),
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPOSITORY},
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]

    trials = load(tmp_path, "killed").trials
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert list(lost_trials(load(tmp_path, "killed"))) == [0]
    assert "stopped while the trial was running" in trials[0].user_attrs["fail_reason"]
    assert trials[1].user_attrs[RETRY_OF_ATTR] == 0
    assert trials[1].params == trials[0].params
    assert used_budget(load(tmp_path, "killed")) == 2

    parents, runs = trial_runs(tmp_path, "killed")
    assert len(parents) == 1
    assert [run.info.status for run in runs] == ["FAILED", "FINISHED", "FINISHED"]
    assert [run.info.run_name for run in runs] == ["trial-0", "trial-1", "trial-2"]
    assert "stopped while the trial was running" in runs[0].data.tags["optuna.fail_reason"]


@pytest.mark.parametrize(("sent", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_worker_signal_ends_trial_cleanly(tmp_path, colour_tree, sent, exit_code):
    worker = start_worker(worker_command(colour_tree, "stopped", 3, 40), tmp_path, "worker")
    wait_for_epoch(tmp_path, "stopped")
    worker.send_signal(sent)

    assert worker.wait(timeout=120) == exit_code
    output = (tmp_path / "worker.log").read_text()
    assert f"stopped by {signal.Signals(sent).name}" in output
    assert "0 complete, 0 pruned, 1 failed" in output
    trials = load(tmp_path, "stopped").trials
    assert [trial.state.name for trial in trials] == ["FAIL"]
    assert list(lost_trials(load(tmp_path, "stopped"))) == [0]
    assert used_budget(load(tmp_path, "stopped")) == 0
    parents, runs = trial_runs(tmp_path, "stopped")
    assert parents[0].info.status == "KILLED"
    assert runs[0].info.status == "FAILED"
    assert f"interrupted by {signal.Signals(sent).name}" in runs[0].data.tags["optuna.fail_reason"]


@pytest.mark.parametrize("storage", ["sqlite:///mlruns/optuna.db", "journal:mlruns/optuna.journal"])
def test_parallel_workers_share_study(tmp_path, colour_tree, storage):
    command = worker_command(colour_tree, "parallel", 5, 1, f"study.storage={storage}")
    workers = [start_worker(command, tmp_path, f"worker{index}") for index in range(4)]
    codes = [worker.wait(timeout=600) for worker in workers]

    logs = "".join((tmp_path / f"worker{index}.log").read_text() for index in range(4))
    assert codes == [0, 0, 0, 0], logs[-3000:]
    assert "database is locked" not in logs
    if storage.startswith("journal:"):
        study = load(tmp_path, "parallel", optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "mlruns" / "optuna.journal"))))
    else:
        study = load(tmp_path, "parallel")
    numbers = [trial.number for trial in study.trials]
    assert sorted(numbers) == list(range(5))
    assert all(trial.state.name == "COMPLETE" for trial in study.trials)
    workers_seen = {trial.user_attrs["worker"] for trial in study.trials}
    assert len(workers_seen) >= 2

    parents, runs = trial_runs(tmp_path, "parallel")
    assert len(parents) == 1
    assert sorted(int(run.data.tags["optuna.trial_number"]) for run in runs) == list(range(5))
    assert {run.info.run_id for run in runs} == {trial.user_attrs["mlflow_run_id"] for trial in study.trials}


def test_trial_gate_serializes(tmp_path):
    gate = TrialGate(f"sqlite:///{tmp_path}/optuna.db")
    other = TrialGate(f"sqlite:///{tmp_path}/optuna.db")
    gate.acquire()

    with pytest.raises(filelock.Timeout):
        other._file_lock.acquire(timeout=0.2)
    gate.release()
    other.acquire()
    other.release()


def test_worker_identity_is_this_process():
    host, pid, _ = worker_identity().rsplit(":", 2)

    assert int(pid) == os.getpid()
    assert host


def test_recover_finds_unreaped_killed_worker(tmp_path):
    # A launcher waits on its workers in order, so a killed later worker stays a zombie for a while.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    process = psutil.Process(child.pid)
    identity = f"{worker_identity().rsplit(':', 2)[0]}:{child.pid}:{process.create_time():.2f}"
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="zombie", direction="maximize")
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, identity)
    ignore_run = lambda run_id, reason: None  # noqa: E731  The trial has no MLflow run here.
    try:
        assert recover_dead_workers(study, retry=False, close_run=ignore_run) == []

        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.status() == psutil.STATUS_ZOMBIE

        assert recover_dead_workers(study, retry=False, close_run=ignore_run) == [trial.number]
    finally:
        child.kill()
        child.wait()

    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert list(lost_trials(study)) == [trial.number]
