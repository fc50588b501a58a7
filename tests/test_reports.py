"""Study reports: importances, plots as MLflow artifacts, and the ``pipeline.report`` command."""

from __future__ import annotations

import logging
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
from pipeline.report import run_report
from pipeline.reports import param_importances, write_study_plots
from pipeline.search import run_search

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = ("conv1", "conv2", "dense1", "output")
STUDY_PLOTS = ("optimization_history", "intermediate_values", "parallel_coordinate", "param_importances")
PLOTS = (*STUDY_PLOTS, "param_importances_epoch1")
STUDY = "report"


def _all_layers(label: str) -> dict[str, str]:
    return {f"{layer}.kernel_initializer": label for layer in KERNELS}


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory, colour_tree):
    """Run a 5-trial, 2-epoch study in which the third trial (all-zero kernels) is pruned.

    All-zero kernels keep the validation accuracy at chance, below the median of the two
    earlier trials, so the median pruner stops that trial after its first epoch.
    """
    folder = tmp_path_factory.mktemp("report_study")
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({"default_choices": ["he_normal", "glorot_uniform", "zeros"]}))
    overrides = [
        f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16",
        "train.epochs=2", "train.progress=false", f"study.name={STUDY}", f"space={space}",
        "train.learning_rate=3e-4", "study.pruner=median", "study.n_startup_trials=2", "study.n_warmup_steps=0", "study.n_trials=5",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        storage = f"sqlite:///{folder}/mlruns/optuna.db"
        os.makedirs(folder / "mlruns")
        study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
        for label in ("he_normal", "glorot_uniform", "zeros"):
            study.enqueue_trial(_all_layers(label))

        config, cfg = compose_search_config(overrides)
        assert run_search(config, OmegaConf.to_container(cfg, resolve=True)) == 0
        yield folder, overrides


def _client(folder) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db")


def _parent_run(folder):
    client = _client(folder)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`pipeline.role` = 'study'")
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def reported(study_folder):
    folder, overrides = study_folder
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        config, _ = compose_search_config(overrides)
        parent_id, importances = run_report(config)
    return folder, parent_id, importances


def test_study_has_pruned_trial(study_folder):
    folder, _ = study_folder
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder}/mlruns/optuna.db")
    states = [trial.state.name for trial in study.trials]

    assert states[:3] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert len(states) == 5
    assert study.trials[2].last_step == 0


def test_report_logs_plots_to_parent(reported):
    folder, parent_id, _ = reported
    client, parent = _parent_run(folder)
    files = sorted(os.path.basename(item.path) for item in client.list_artifacts(parent_id, "plots"))

    assert parent.info.run_id == parent_id
    assert files == sorted(f"{name}.{extension}" for name in PLOTS for extension in ("html", "png"))


def test_report_plots_open_offline(reported):
    folder, parent_id, _ = reported
    local = _client(folder).download_artifacts(parent_id, "plots", str(folder / "downloaded"))

    with open(os.path.join(local, "intermediate_values.html"), encoding="utf-8") as stream:
        html = stream.read()
    with open(os.path.join(local, "intermediate_values.png"), "rb") as stream:
        png = stream.read()
    assert "<script src=\"http" not in html
    assert "Plotly.newPlot" in html
    assert len(html) > 1_000_000  # plotly.js itself is embedded
    assert png.startswith(b"\x89PNG")


def test_report_logs_importance_metrics(reported):
    folder, parent_id, importances = reported
    metrics = _client(folder).get_run(parent_id).data.metrics
    logged = {key[len("importance."):]: value for key, value in metrics.items() if key.startswith("importance.")}

    assert sorted(logged) == sorted(f"{layer}.kernel_initializer" for layer in KERNELS)
    assert logged == pytest.approx(importances)
    assert sum(logged.values()) == pytest.approx(1.0)
    assert all(value >= 0 for value in logged.values())


def test_report_rejects_orphan_study(study_folder, monkeypatch):
    folder, overrides = study_folder
    monkeypatch.chdir(folder)
    optuna.create_study(study_name="orphan", storage=f"sqlite:///{folder}/mlruns/optuna.db", direction="maximize")
    config, _ = compose_search_config([*overrides, "study.name=orphan"])

    with pytest.raises(UserError, match="Study 'orphan' has no MLflow parent run in experiment 'orphan'"):
        run_report(config)


def test_report_rejects_missing_storage(workdir):
    config, _ = compose_search_config(["study.name=x"])

    with pytest.raises(UserError, match="study.storage sqlite:///.* does not exist; run pipeline.search first"):
        run_report(config)
    assert not os.path.exists("mlruns")


def test_report_command_missing_study(study_folder):
    folder, _ = study_folder
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.report", "study.name=nope"],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )

    assert result.returncode == 2
    assert "error: Study 'nope' was not found" in result.stderr
    assert "Traceback" not in result.stderr


def _synthetic_study(values: dict[str, float], trials: list[tuple[str, str, str]]) -> optuna.Study:
    """Return an in-memory study whose value depends on parameter ``a`` alone."""
    study = optuna.create_study(direction="maximize")
    for a, b, c in trials:
        study.enqueue_trial({"a": a, "b": b, "c": c})

    def objective(trial: optuna.Trial) -> float:
        a = trial.suggest_categorical("a", list(values))
        trial.suggest_categorical("b", ["p", "q"])
        trial.suggest_categorical("c", ["u", "v", "w"])
        return values[a]

    study.optimize(objective, n_trials=len(trials))
    return study


SYNTHETIC_TRIALS = [
    ("x", "p", "u"), ("y", "p", "v"), ("z", "q", "w"), ("x", "q", "v"),
    ("y", "q", "u"), ("z", "p", "u"), ("x", "p", "w"), ("y", "q", "w"),
]


def test_importances_find_deciding_param():
    study = _synthetic_study({"x": 0.1, "y": 0.5, "z": 0.9}, SYNTHETIC_TRIALS)

    importances = param_importances(study)

    assert sorted(importances) == ["a", "b", "c"]
    assert max(importances, key=importances.get) == "a"
    assert importances["a"] > 0.8
    assert sum(importances.values()) == pytest.approx(1.0)
    assert param_importances(study) == importances  # seeded, so repeatable


def test_importances_need_two_complete_trials(caplog):
    study = _synthetic_study({"x": 0.1, "y": 0.5}, SYNTHETIC_TRIALS[:1])
    pruned = study.ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)

    with caplog.at_level(logging.INFO, logger="pipeline.reports"):
        assert param_importances(study) == {}
    assert "1 completed trial(s)" in caplog.text


def test_importances_need_varying_params(caplog):
    study = _synthetic_study({"x": 0.1, "y": 0.5}, [("x", "p", "u"), ("x", "p", "u")])

    with caplog.at_level(logging.INFO, logger="pipeline.reports"):
        assert param_importances(study) == {}
    assert "same parameters" in caplog.text


def test_importances_need_varying_values(caplog):
    study = _synthetic_study({"x": 0.5, "y": 0.5}, [("x", "p", "u"), ("y", "q", "v")])

    with caplog.at_level(logging.INFO, logger="pipeline.reports"):
        assert param_importances(study) == {}
    assert "same value (0.5)" in caplog.text


def test_plots_skip_empty_study(tmp_path, caplog):
    study = optuna.create_study(direction="maximize")

    with caplog.at_level(logging.INFO, logger="pipeline.reports"):
        written = write_study_plots(study, str(tmp_path / "plots"))

    assert written == []
    assert caplog.text.count("skipped plot") == len(STUDY_PLOTS)


def test_plots_of_small_study(tmp_path):
    study = _synthetic_study({"x": 0.1, "y": 0.5, "z": 0.9}, SYNTHETIC_TRIALS[:3])

    written = write_study_plots(study, str(tmp_path))

    # No trial reported an intermediate value, so only the learning curves are missing.
    expected = [name for name in STUDY_PLOTS if name != "intermediate_values"]
    assert sorted(os.path.basename(path) for path in written) == sorted(
        f"{name}.{extension}" for name in expected for extension in ("html", "png")
    )


def test_first_epoch_study_includes_pruned_trials():
    from pipeline.reports import first_epoch_study

    study = optuna.create_study(direction="maximize")
    for index, state in enumerate(("COMPLETE", "PRUNED", "PRUNED")):
        trial = study.ask({"conv1.kernel_initializer": optuna.distributions.CategoricalDistribution(["a", "b"])})
        trial.report(0.1 * (index + 1), step=0)
        if state == "COMPLETE":
            study.tell(trial, 0.9)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    copy = first_epoch_study(study)

    assert [trial.value for trial in copy.trials] == pytest.approx([0.1, 0.2, 0.3])
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in copy.trials)


def test_report_logs_first_epoch_importances(study_folder):
    folder, _ = study_folder
    client, parent = _parent_run(folder)
    first_epoch = {key: value for key, value in parent.data.metrics.items() if key.startswith("importance_epoch1.")}
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "plots")}

    assert sum(first_epoch.values()) == pytest.approx(1.0, abs=1e-6)
    assert "plots/param_importances_epoch1.png" in artifacts
    assert "plots/param_importances_epoch1.html" in artifacts
