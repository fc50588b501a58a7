"""Confirmation runs: candidate and baseline retrained on the same seeds and tested once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import compose_search_config
from pipeline import confirm
from pipeline.data import load_dataset
from pipeline.errors import UserError

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = ("conv1", "conv2", "dense1", "output")
SEEDS = (0, 1, 2)
EXPERIMENT = "exp-confirm"


def _write(path, content: dict) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def _he_normal_file(folder) -> str:
    """Write a file shaped like pipeline.export's output that fixes he_normal on every layer."""
    return _write(folder / "candidate.yaml", {
        "provenance": {"study": "exp", "trial": 3, "value": 0.9},
        "layers": {layer: ["he_normal"] for layer in KERNELS},
    })


def _data_overrides(colour_tree: str) -> list[str]:
    return [
        f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16",
        "train.epochs=1", "train.progress=false", "study.name=exp",
    ]


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, colour_tree):
    """Run ``python -m pipeline.confirm`` with 3 seeds and 1 epoch, and return the folder, stdout and overrides."""
    folder = tmp_path_factory.mktemp("confirm")
    candidate = _he_normal_file(folder)
    arguments = [*_data_overrides(colour_tree), f"confirm.candidate={candidate}", f"confirm.seeds=[{','.join(map(str, SEEDS))}]"]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.confirm", *arguments],
        cwd=folder, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )

    assert result.returncode == 0, result.stderr
    return folder, result.stdout, arguments


def _runs(folder):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [run for run in runs if run.data.tags.get("pipeline.role") == "confirm"]
    children = {run.info.run_name: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    return client, parents, children


def test_confirm_creates_runs(confirmed):
    folder, _, _ = confirmed
    client, parents, children = _runs(folder)

    assert len(parents) == 1
    assert parents[0].info.run_name == "confirm"
    assert parents[0].info.status == "FINISHED"
    assert sorted(children) == sorted(f"{arm}-seed{seed}" for arm in ("candidate", "baseline") for seed in SEEDS)
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0, name
        assert np.isfinite(run.data.metrics["test_loss"]), name
    assert client.get_experiment_by_name("exp") is None  # the study's own experiment is untouched


def test_confirm_run_params_and_epochs(confirmed):
    folder, _, _ = confirmed
    client, _, children = _runs(folder)

    candidate = children["candidate-seed1"]
    baseline = children["baseline-seed1"]
    assert {key: candidate.data.params[f"{key}.kernel_initializer"] for key in KERNELS} == dict.fromkeys(KERNELS, "he_normal")
    assert {key: baseline.data.params[f"{key}.kernel_initializer"] for key in KERNELS} == dict.fromkeys(KERNELS, "glorot_uniform")
    assert candidate.data.params["seed"] == "1"
    assert candidate.data.params["train.epochs"] == "1"
    assert candidate.data.params["train.batch_size"] == "16"
    history = client.get_metric_history(candidate.info.run_id, "val_accuracy")
    assert [metric.step for metric in history] == [0]


def test_confirm_parent_summary(confirmed):
    folder, stdout, _ = confirmed
    client, parents, children = _runs(folder)
    parent = parents[0]
    candidate = [children[f"candidate-seed{seed}"].data.metrics["test_accuracy"] for seed in SEEDS]
    baseline = [children[f"baseline-seed{seed}"].data.metrics["test_accuracy"] for seed in SEEDS]
    metrics = parent.data.metrics

    assert metrics["candidate_test_accuracy_mean"] == pytest.approx(np.mean(candidate))
    assert metrics["baseline_test_accuracy_std"] == pytest.approx(np.std(baseline, ddof=1))
    assert metrics["difference_mean"] == pytest.approx(np.mean(candidate) - np.mean(baseline))
    assert metrics["seeds"] == len(SEEDS)
    if "p_value" in metrics:  # absent only when every seed gives the same difference
        assert metrics["difference_ci_low"] <= metrics["difference_mean"] <= metrics["difference_ci_high"]
    verdict = parent.data.tags["verdict"]
    assert verdict.endswith(f"{len(SEEDS)} seeds)")
    assert stdout.splitlines()[-1] == verdict  # Hydra logs to stdout as well, before the verdict
    assert parent.data.tags["confirm.candidate"].endswith("candidate.yaml")
    assert parent.data.tags["confirm.baseline"] == "Keras default (glorot_uniform on every kernel layer)"
    assert json.loads(parent.data.tags["confirm.candidate.provenance"]) == {"study": "exp", "trial": 3, "value": 0.9}


def test_confirm_parent_artifacts(confirmed):
    folder, _, _ = confirmed
    client, parents, _ = _runs(folder)
    parent_id = parents[0].info.run_id
    local = client.download_artifacts(parent_id, "", str(folder / "downloaded"))

    with open(os.path.join(local, "verdict.txt"), encoding="utf-8") as stream:
        assert stream.read() == parents[0].data.tags["verdict"] + "\n"
    with open(os.path.join(local, "results.json"), encoding="utf-8") as stream:
        results = json.load(stream)
    assert len(results["runs"]) == 2 * len(SEEDS)
    assert results["comparison"]["verdict"] == parents[0].data.tags["verdict"]
    assert os.path.isfile(os.path.join(local, "inputs", "candidate", "candidate.yaml"))
    assert os.path.isfile(os.path.join(local, "config.yaml"))


def test_confirm_model_loads_back(confirmed):
    folder, _, arguments = confirmed
    client, parents, children = _runs(folder)
    path = client.download_artifacts(parents[0].info.run_id, "model/candidate-seed0.keras", str(folder / "model"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        config, _ = compose_search_config(arguments)
        dataset = load_dataset(config.data)

    model = keras.saving.load_model(path)
    scores = model.evaluate(dataset.x_test, dataset.y_test, batch_size=16, verbose=0, return_dict=True)

    assert model.get_layer("conv1").kernel_initializer.__class__.__name__ == "HeNormal"
    assert scores["accuracy"] == pytest.approx(children["candidate-seed0"].data.metrics["test_accuracy"])


def _expect_user_error(overrides: list[str], message: str) -> None:
    config, _ = compose_search_config(overrides)
    with pytest.raises(UserError, match=message):
        confirm.run_confirm(config)
    assert not os.path.exists("mlruns"), "a rejected confirm must not create the MLflow store"


def test_confirm_rejects_missing_candidate_setting(workdir, colour_tree):
    _expect_user_error(_data_overrides(colour_tree), "confirm.candidate is not set")


def test_confirm_rejects_missing_candidate_file(workdir, colour_tree):
    _expect_user_error(
        [*_data_overrides(colour_tree), "confirm.candidate=nowhere/best.yaml"],
        r"confirm.candidate file .*nowhere/best.yaml not found",
    )


def test_confirm_rejects_open_layer(workdir, colour_tree):
    path = _write(workdir / "open.yaml", {"default_choices": ["he_normal"], "layers": {"conv2": ["he_normal", "orthogonal"]}})

    _expect_user_error(
        [*_data_overrides(colour_tree), f"confirm.candidate={path}"],
        r"must fix every layer to one initializer, but these layers have several choices: \{'conv2': \['he_normal', 'orthogonal'\]\}",
    )


def test_confirm_rejects_layers_of_other_model(workdir, colour_tree):
    path = _write(workdir / "deep.yaml", {"layers": {f"conv{number}": ["he_normal"] for number in range(1, 13)}})

    _expect_user_error(
        [*_data_overrides(colour_tree), f"confirm.candidate={path}"],
        r"confirm.candidate .*deep.yaml is not a usable search-space file for this model: .*names layers \['conv10'",
    )


def test_confirm_rejects_searched_hyperparameter(workdir, colour_tree):
    path = _write(workdir / "lr.yaml", {
        "default_choices": ["he_normal"],
        "hyperparameters": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    })

    _expect_user_error([*_data_overrides(colour_tree), f"confirm.candidate={path}"], r"searches the hyperparameters \['learning_rate'\]")


def test_confirm_rejects_invalid_baseline(workdir, colour_tree):
    candidate = _he_normal_file(workdir)
    baseline = _write(workdir / "baseline.yaml", {"default_choices": ["he_normal", "glorot_uniform"]})

    _expect_user_error(
        [*_data_overrides(colour_tree), f"confirm.candidate={candidate}", f"confirm.baseline={baseline}"],
        "confirm.baseline .*baseline.yaml must fix every layer",
    )


def test_confirm_rejects_wrong_input_shape(workdir, colour_tree):
    candidate = _he_normal_file(workdir)

    _expect_user_error(
        [*_data_overrides(colour_tree), f"confirm.candidate={candidate}", "model.input_shape=[16,16,3]"],
        r"model.input_shape is \[16, 16, 3\] but the images of .* have shape \[32, 32, 3\]",
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("confirm.seeds=[]", r"confirm.seeds is empty"),
        ("confirm.seeds=[0,1,1]", r"must be distinct non-negative integers but got \[0, 1, 1\]"),
        ("confirm.seeds=[-1,2]", r"must be distinct non-negative integers"),
        ("confirm.confidence=1.0", r"confirm.confidence must be between 0 and 1 \(exclusive\) but got 1.0"),
        ("confirm.confidence=0", r"confirm.confidence must be between 0 and 1"),
        ("confirm.confidence=95", r"confirm.confidence must be between 0 and 1"),
    ],
)
def test_confirm_rejects_bad_settings(workdir, colour_tree, override, message):
    candidate = _he_normal_file(workdir)

    _expect_user_error([*_data_overrides(colour_tree), f"confirm.candidate={candidate}", override], message)


def test_confirm_command_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.confirm", "confirm.candidate=missing.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )

    assert result.returncode == 2
    assert "error: confirm.candidate file" in result.stderr
    assert "missing.yaml not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_confirm_diverged_candidate(workdir, colour_tree):
    # A learning rate of 1e6 makes the loss NaN in the first epoch, while the baseline file keeps 1e-3.
    candidate = _write(workdir / "wild.yaml", {"default_choices": ["he_normal"], "hyperparameters": {"learning_rate": 1.0e6}})
    baseline = _write(workdir / "calm.yaml", {"default_choices": ["glorot_uniform"], "hyperparameters": {"learning_rate": 1.0e-3}})
    config, _ = compose_search_config(
        [*_data_overrides(colour_tree), f"confirm.candidate={candidate}", f"confirm.baseline={baseline}", "confirm.seeds=[0]"]
    )

    comparison = confirm.run_confirm(config)

    client, parents, children = _runs(workdir)
    wild = children["candidate-seed0"]
    assert wild.info.status == "FAILED"
    assert wild.data.tags["confirm.fail_reason"] == "non-finite loss: loss became nan at epoch 0"
    assert wild.data.params["train.learning_rate"] == "1000000.0"
    assert wild.data.metrics["test_accuracy"] == pytest.approx(comparison.candidate_mean)
    assert children["baseline-seed0"].info.status == "FINISHED"
    assert children["baseline-seed0"].data.params["train.learning_rate"] == "0.001"
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["confirm.non_finite_runs"] == "candidate-seed0"
    assert "p_value" not in parents[0].data.metrics
    assert comparison.verdict.startswith("too few seeds for a verdict: candidate − baseline = ")


def test_confirm_applies_lsuv(workdir, colour_tree, monkeypatch):
    from pipeline import initializers

    calls = []
    original = initializers.apply_lsuv

    def spy(model, batch, *args, **kwargs):
        calls.append((model.name, len(batch)))
        return original(model, batch, *args, **kwargs)

    monkeypatch.setattr(initializers, "apply_lsuv", spy)
    candidate = _write(workdir / "lsuv.yaml", {"default_choices": ["lsuv"]})
    config, _ = compose_search_config(
        [*_data_overrides(colour_tree), f"confirm.candidate={candidate}", "confirm.seeds=[0]", "diagnostics.batch_size=32"]
    )

    confirm.run_confirm(config)

    client, parents, children = _runs(workdir)
    assert calls == [("seed_cnn", 32)]  # the candidate only: the glorot_uniform baseline needs no data
    assert children["candidate-seed0"].info.status == "FINISHED"
    assert children["candidate-seed0"].data.params["conv1.kernel_initializer"] == "lsuv"
    path = client.download_artifacts(parents[0].info.run_id, "model/candidate-seed0.keras", str(workdir / "model"))
    model = keras.saving.load_model(path)
    assert isinstance(model.get_layer("conv1").kernel_initializer, initializers.LSUV)
