"""Workers sharing one study through a real PostgreSQL server and an MLflow tracking server.

The fixtures start both on loopback in temporary folders. Without PostgreSQL's server
programs (Debian's package ``postgresql``), the tests skip with a reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline.workers import lost_trials, used_budget

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "pipeline-test-password"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_programs() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])

    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


@pytest.fixture(scope="module")
def postgres():
    """Start a private PostgreSQL server on loopback with password authentication."""
    programs = postgres_programs()
    if programs is None:
        pytest.skip("PostgreSQL server programs (initdb) not found; install Debian's postgresql package")

    # initdb refuses to run as root, so root runs the server as the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="pipeline-pg-")
    os.chmod(folder, 0o755)
    password_file = os.path.join(folder, "password")
    with open(password_file, "w") as stream:
        stream.write(PASSWORD)
    if as_user:
        shutil.chown(folder, "postgres")
        shutil.chown(password_file, "postgres")

    data = os.path.join(folder, "data")
    initialized = subprocess.run(
        [*as_user, f"{programs}/initdb", "-D", data, "-U", "pipeline", "--auth=scram-sha-256", f"--pwfile={password_file}"],
        capture_output=True, text=True,
    )
    if initialized.returncode != 0:
        pytest.skip(f"PostgreSQL could not be initialized: {initialized.stderr.strip()[-300:]}")

    port = free_port()
    server = subprocess.Popen(
        [*as_user, f"{programs}/postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1", "-k", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"postgresql+psycopg2://pipeline:{PASSWORD}@127.0.0.1:{port}"
    try:
        import psycopg2

        def ready() -> bool:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="pipeline", password=PASSWORD, dbname="postgres").close()
                return True
            except psycopg2.OperationalError:
                return False

        wait_until(ready, 60, "PostgreSQL start")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="pipeline", password=PASSWORD, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna")
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield {"port": port, "optuna": f"{base}/optuna", "mlflow": f"{base}/mlflow"}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """Start an MLflow tracking server on loopback, backed by the PostgreSQL database."""
    port = free_port()
    artifacts = tmp_path_factory.mktemp("server_artifacts")
    log = open(tmp_path_factory.mktemp("server_log") / "mlflow.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres["mlflow"],
         "--artifacts-destination", artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 180, "MLflow server start")
        yield uri
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def cluster_environment(postgres, tracking_server, **changes) -> dict[str, str]:
    environment = {
        **os.environ,
        "PYTHONPATH": REPOSITORY,
        "PIPELINE_OPTUNA_STORAGE": postgres["optuna"],
        "PIPELINE_TRACKING_URI": tracking_server,
    }
    environment.update(changes)
    return {key: value for key, value in environment.items() if value is not None}


def worker_command(colour_tree: str, study: str, n_trials: int, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.search", "+cluster=postgres",
        f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=8",
        f"train.epochs={epochs}", "train.progress=false", "study.pruner=none", "study.sampler=random",
        f"study.name={study}", f"study.n_trials={n_trials}",
    ]


def running_trial_workers(postgres, study_name: str) -> list[str]:
    try:
        study = optuna.load_study(study_name=study_name, storage=postgres["optuna"])
    except KeyError:
        return []
    return [
        trial.user_attrs["worker"]
        for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        if "worker" in trial.user_attrs and trial.intermediate_values
    ]


def test_cluster_workers_share_study_and_recover(tmp_path, postgres, tracking_server, colour_tree):
    environment = cluster_environment(postgres, tracking_server)
    command = worker_command(colour_tree, "cluster", 7, 12)
    logs = [open(tmp_path / f"worker{index}.log", "w") for index in range(3)]
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=logs[index], stderr=subprocess.STDOUT)
        for index in range(3)
    ]

    # Kill the worker whose trial has finished at least one epoch, in the middle of that trial.
    def trial_running_or_worker_exited() -> bool:
        return any(worker.poll() is not None for worker in workers) or bool(running_trial_workers(postgres, "cluster"))

    wait_until(trial_running_or_worker_exited, 300, "a trial's first epoch")
    assert all(worker.poll() is None for worker in workers), (tmp_path / "worker0.log").read_text()[-3000:]
    victim_identity = running_trial_workers(postgres, "cluster")[0]
    victim_pid = int(victim_identity.rsplit(":", 2)[1])
    victim = next(worker for worker in workers if worker.pid == victim_pid)
    victim.send_signal(signal.SIGKILL)
    codes = [worker.wait(timeout=600) for worker in workers]

    output = "".join((tmp_path / f"worker{index}.log").read_text() for index in range(3))
    assert sorted(codes) == [-signal.SIGKILL, 0, 0], output[-3000:]
    assert "database is locked" not in output
    assert "Keras backend tensorflow, devices CPU only" in output

    study = optuna.load_study(study_name="cluster", storage=postgres["optuna"])
    trials = study.trials
    assert sorted(trial.number for trial in trials) == list(range(len(trials)))
    assert used_budget(study) == 7
    lost = lost_trials(study)
    assert len(lost) == 1
    (lost_number,) = lost
    assert f"worker {victim_identity} stopped" in lost[lost_number]
    assert [trial.state.name for trial in trials if trial.number != lost_number] == ["COMPLETE"] * 7

    client = MlflowClient(tracking_uri=tracking_server)
    experiment = client.get_experiment_by_name("cluster")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("pipeline.role") == "study"]
    trial_runs = [run for run in runs if "optuna.trial_number" in run.data.tags]
    assert len(parents) == 1
    assert sorted(int(run.data.tags["optuna.trial_number"]) for run in trial_runs) == sorted(trial.number for trial in trials)
    for run in trial_runs:
        expected = "FAILED" if int(run.data.tags["optuna.trial_number"]) == lost_number else "FINISHED"
        assert run.info.status == expected
        assert "val_accuracy" in run.data.metrics
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert "config.yaml" in {item.path for item in client.list_artifacts(parents[0].info.run_id)}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"PIPELINE_OPTUNA_STORAGE": None}, "PIPELINE_OPTUNA_STORAGE"),
        ({"PIPELINE_TRACKING_URI": "http://127.0.0.1:9"}, "The MLflow tracking server at http://127.0.0.1:9 could not be opened"),
    ],
)
def test_cluster_bad_setup_trains_nothing(tmp_path, postgres, tracking_server, colour_tree, changes, expected):
    result = subprocess.run(
        worker_command(colour_tree, "badsetup", 2, 1), cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=cluster_environment(postgres, tracking_server, **changes),
    )

    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "started:" not in result.stdout + result.stderr
    with pytest.raises(KeyError):
        optuna.load_study(study_name="badsetup", storage=postgres["optuna"])


def test_cluster_missing_password_trains_nothing(tmp_path, postgres, tracking_server, colour_tree):
    without_password = postgres["optuna"].replace(f":{PASSWORD}@", "@")
    result = subprocess.run(
        worker_command(colour_tree, "nopassword", 2, 1), cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=cluster_environment(postgres, tracking_server, PIPELINE_OPTUNA_STORAGE=without_password),
    )

    assert result.returncode == 2
    assert "could not be opened" in result.stderr
    assert "password" in result.stderr
    assert PASSWORD not in result.stderr
    assert "started:" not in result.stdout + result.stderr
