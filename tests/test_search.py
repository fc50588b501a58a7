"""End-to-end studies: what lands in Optuna's storage and in MLflow, resume, failures and bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import compose_search_config
from pipeline.errors import UserError
from pipeline.search import run_search

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_CNN_KERNELS = ("conv1", "conv2", "dense1", "output")
GOOD = {f"{layer}.kernel_initializer": "he_normal" for layer in SEED_CNN_KERNELS}
GOOD_TOO = {f"{layer}.kernel_initializer": "glorot_uniform" for layer in SEED_CNN_KERNELS}
# All-zero kernels give every image the same output, so validation accuracy stays at
# chance (0.1 on balanced data) and the median pruner stops the trial after one epoch.
DEAD = {f"{layer}.kernel_initializer": "zeros" for layer in SEED_CNN_KERNELS}


def run(overrides: list[str]) -> int:
    config, cfg = compose_search_config(overrides)
    return run_search(config, OmegaConf.to_container(cfg, resolve=True))


def write_space(folder, content: dict) -> str:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def enqueue(study_name: str, storage: str, params: list[dict]) -> None:
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)
    for values in params:
        study.enqueue_trial(values)


def mlflow_runs(workdir, study_name: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("pipeline.role") == "study"]
    trials = sorted((run for run in runs if "optuna.trial_number" in run.data.tags), key=lambda run: int(run.data.tags["optuna.trial_number"]))
    return client, parents, trials


def check_three_trial_study(workdir, data_overrides: list[str], epochs: int) -> None:
    storage = f"sqlite:///{workdir}/mlruns/optuna.db"
    space = write_space(workdir, {"default_choices": ["he_normal", "glorot_uniform", "zeros"]})
    overrides = [
        *data_overrides,
        f"space={space}",
        "study.name=e2e",
        "study.n_trials=3",
        "study.n_startup_trials=2",
        f"train.epochs={epochs}",
        "train.progress=false",
    ]
    os.makedirs(workdir / "mlruns", exist_ok=True)
    enqueue("e2e", storage, [GOOD, GOOD_TOO, DEAD])

    assert run(overrides) == 0

    study = optuna.load_study(study_name="e2e", storage=storage)
    trials = study.get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[2].last_step == 0
    assert sorted(trials[0].params) == sorted(GOOD)
    assert sorted(trials[0].intermediate_values) == list(range(epochs))
    assert [trial.user_attrs["seed"] for trial in trials] == [0, 1, 2]

    client, parents, runs = mlflow_runs(workdir, "e2e")
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["optuna.study_name"] == "e2e"
    assert parents[0].data.metrics["trials_complete"] == 2
    assert parents[0].data.metrics["trials_pruned"] == 1
    artifacts = {item.path for item in client.list_artifacts(parents[0].info.run_id)}
    assert {"config.yaml", "best_config.yaml"} <= artifacts

    assert [run.info.run_name for run in runs] == ["trial-0", "trial-1", "trial-2"]
    assert [run.data.tags["optuna.state"] for run in runs] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED", "KILLED"]
    assert runs[2].data.tags["optuna.pruned_at_epoch"] == "0"
    for trial, record in zip(trials, runs):
        assert record.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert trial.user_attrs["mlflow_run_id"] == record.info.run_id
        assert record.data.params["conv1.kernel_initializer"] == trial.params["conv1.kernel_initializer"]
        assert record.data.params["train.epochs"] == str(epochs)
        assert record.data.tags["trial.seed"] == str(trial.user_attrs["seed"])

    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(runs[0].info.run_id, metric)
        assert [point.step for point in history] == list(range(epochs)), metric
    pruned_history = client.get_metric_history(runs[2].info.run_id, "val_accuracy")
    assert [point.step for point in pruned_history] == [0]
    assert runs[0].data.metrics["val_accuracy"] == pytest.approx(trials[0].value)


def test_search_colour_tree_three_trials(workdir, colour_tree):
    check_three_trial_study(workdir, [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=8"], epochs=2)


def test_search_real_subset_three_trials(workdir, real_archive):
    data = [
        f"data.path={real_archive}",
        "data.train_subset=2000",
        "data.val_subset=500",
        "data.test_subset=100",
        "train.batch_size=64",
    ]
    check_three_trial_study(workdir, data, epochs=2)


def test_search_resume_keeps_total(workdir, colour_tree):
    base = [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16", "train.epochs=1", "train.progress=false", "study.name=resume"]

    assert run([*base, "study.n_trials=2"]) == 0
    assert run([*base, "study.n_trials=2"]) == 0
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    assert len(study.trials) == 2

    assert run([*base, "study.n_trials=3"]) == 0
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    assert len(study.trials) == 3
    _, parents, runs = mlflow_runs(workdir, "resume")
    assert len(parents) == 1
    assert [run.info.run_name for run in runs] == ["trial-0", "trial-1", "trial-2"]


def test_search_diverging_trial_fails_and_study_continues(workdir, colour_tree):
    # Plain SGD at a learning rate of a million overflows the weights within one epoch.
    space = write_space(workdir, {
        "default_choices": ["he_normal"],
        "hyperparameters": {"learning_rate": {"type": "categorical", "choices": [1.0e6, 0.01]}},
    })
    storage = f"sqlite:///{workdir}/mlruns/optuna.db"
    os.makedirs(workdir / "mlruns", exist_ok=True)
    enqueue("diverge", storage, [{**GOOD, "learning_rate": 1.0e6}, {**GOOD, "learning_rate": 0.01}])
    overrides = [f"data.path={colour_tree}", "data.validation_fraction=0.25", f"space={space}", "train=sgd",
                 "train.epochs=1", "train.batch_size=16", "train.progress=false", "study.name=diverge",
                 "study.n_trials=2", "study.pruner=none"]

    assert run(overrides) == 0

    trials = optuna.load_study(study_name="diverge", storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE"]
    assert "non-finite loss" in trials[0].user_attrs["fail_reason"]
    _, _, runs = mlflow_runs(workdir, "diverge")
    assert [run.info.status for run in runs] == ["FAILED", "FINISHED"]
    assert runs[0].data.tags["optuna.state"] == "FAIL"
    assert "non-finite loss" in runs[0].data.tags["optuna.fail_reason"]


def test_search_saturating_initializer_pruned_at_init(workdir, colour_tree):
    # A normal initializer with stddev 10,000 saturates the softmax of every image.
    space = write_space(workdir, {
        "initializers": {"huge": {"name": "random_normal", "args": {"stddev": 1.0e4}}},
        "default_choices": ["huge", "he_normal"],
    })
    storage = f"sqlite:///{workdir}/mlruns/optuna.db"
    os.makedirs(workdir / "mlruns", exist_ok=True)
    huge = {f"{layer}.kernel_initializer": "huge" for layer in SEED_CNN_KERNELS}
    enqueue("saturate", storage, [huge, GOOD])
    overrides = [f"data.path={colour_tree}", "data.validation_fraction=0.25", f"space={space}",
                 "train.epochs=1", "train.batch_size=16", "train.progress=false", "study.name=saturate",
                 "study.n_trials=2", "study.pruner=none", "diagnostics.prune_verdicts=[exploding,dead]"]

    assert run(overrides) == 0

    trials = optuna.load_study(study_name="saturate", storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["PRUNED", "COMPLETE"]
    assert trials[0].user_attrs["init_verdict"] == "exploding"
    assert list(trials[0].intermediate_values) == [0]
    assert trials[1].user_attrs["init_verdict"] == "ok"
    client, _, runs = mlflow_runs(workdir, "saturate")
    assert runs[0].info.status == "KILLED"
    assert runs[0].data.tags["optuna.pruned_at_epoch"] == "-1"
    assert "signal exploding at initialization" in runs[0].data.tags["optuna.prune_reason"]
    assert runs[0].data.metrics["init.std_ratio"] > 10
    assert "init_signal.json" in {item.path for item in client.list_artifacts(runs[0].info.run_id)}
    assert runs[1].data.tags["init.verdict"] == "ok"
    assert "init.conv1.activation_std" in runs[1].data.metrics


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["space=SPACE_UNKNOWN_INITIALIZER"], "'kaiming_magic'"),
        (["space=SPACE_UNKNOWN_LAYER"], "layers ['conv7'] that the model lacks"),
        (["space=SPACE_EMPTY"], "must be a non-empty list"),
        (["data.path=MISSING_DATA"], "MISSING_DATA"),
        (["data.path=CORRUPT_ARCHIVE"], "corrupt.tar.gz"),
        (["study.sampler=annealing"], "study.sampler must be one of tpe, random, grid but got 'annealing'"),
        (["study.pruner=sometimes"], "study.pruner must be one of"),
        (["study.storage=sqlite//mlruns/optuna.db"], "is not a valid storage URL"),
        (["study.storage=nosuchdb://localhost/optuna"], "study.storage 'nosuchdb://localhost/optuna' is not a valid storage URL"),
        (["tracking.uri=./mlruns"], "tracking.uri './mlruns' is not supported"),
        (["train.epochs=-2"], "train.epochs must be a positive number but got -2"),
    ],
)
def test_search_bad_input_creates_nothing(workdir, colour_tree, overrides, expected):
    (workdir / "unknown.yaml").write_text("default_choices: [he_normal, kaiming_magic]\n")
    (workdir / "layer.yaml").write_text("default_choices: [he_normal]\nlayers: {conv7: [he_normal]}\n")
    (workdir / "empty.yaml").write_text("default_choices: []\n")
    (workdir / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not a complete archive")
    replacements = {
        "SPACE_UNKNOWN_INITIALIZER": str(workdir / "unknown.yaml"),
        "SPACE_UNKNOWN_LAYER": str(workdir / "layer.yaml"),
        "SPACE_EMPTY": str(workdir / "empty.yaml"),
        "MISSING_DATA": str(workdir / "MISSING_DATA"),
        "CORRUPT_ARCHIVE": str(workdir / "corrupt.tar.gz"),
    }
    resolved = [override.split("=", 1)[0] + "=" + replacements.get(override.split("=", 1)[1], override.split("=", 1)[1]) for override in overrides]
    base = [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.progress=false", "study.name=bad"]

    with pytest.raises(UserError) as caught:
        run([*base, *resolved])

    assert expected in str(caught.value)
    assert not os.path.exists(workdir / "mlruns" / "optuna.db")
    assert not os.path.exists(workdir / "mlruns" / "mlflow.db")


def test_search_command_reports_user_error(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("default_choices: [he_normal, kaiming_magic]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.search", f"space={space}", "study.name=cli"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )

    assert result.returncode == 2
    assert "error: Initializer 'kaiming_magic'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns" / "optuna.db").exists()
