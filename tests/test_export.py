"""Export: the best trial as a file that search accepts back, with provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_search_config
from pipeline.errors import UserError
from pipeline.export import run_export
from pipeline.search import run_search
from pipeline.space import load_space

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = ("conv1", "conv2", "dense1", "output")


def search(overrides: list[str]) -> None:
    config, cfg = compose_search_config(overrides)
    assert run_search(config, OmegaConf.to_container(cfg, resolve=True)) == 0


@pytest.fixture
def finished_study(workdir, colour_tree):
    base = [f"data.path={colour_tree}", "data.validation_fraction=0.25", "train.batch_size=16",
            "train.epochs=1", "train.progress=false", "study.name=exp", "space=relu_scaled", "study.pruner=none"]
    search([*base, "study.n_trials=3"])
    return base


def test_export_yaml_round_trip(workdir, finished_study):
    config, _ = compose_search_config(finished_study)
    path = run_export(config)

    assert path == str(workdir / "exports" / "exp-best.yaml")
    document = yaml.safe_load(open(path))
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    best = study.best_trial
    assert document["provenance"]["study"] == "exp"
    assert document["provenance"]["trial"] == best.number
    assert document["provenance"]["value"] == pytest.approx(best.value)
    assert "exported" in document["provenance"]
    assert document["layers"] == {layer: [best.params[f"{layer}.kernel_initializer"]] for layer in KERNELS}

    exported = load_space(path, KERNELS)
    assert {layer: labels[0] for layer, labels in exported.layer_choices.items()} == {
        layer: best.params[f"{layer}.kernel_initializer"] for layer in KERNELS
    }


def test_export_feeds_back_into_search(workdir, finished_study, colour_tree):
    config, _ = compose_search_config(finished_study)
    path = run_export(config)
    search([*finished_study[:-2], f"space={path}", "study.name=replay", "study.n_trials=1"])

    replay = optuna.load_study(study_name="replay", storage=f"sqlite:///{workdir}/mlruns/optuna.db")
    best = optuna.load_study(study_name="exp", storage=f"sqlite:///{workdir}/mlruns/optuna.db").best_trial
    assert replay.trials[0].params == best.params


def test_export_json_on_request(workdir, finished_study):
    config, _ = compose_search_config([*finished_study, "export.format=json", "export.path=out/best.json"])
    path = run_export(config)

    assert path == str(workdir / "out" / "best.json")
    document = json.load(open(path))
    assert document["provenance"]["study"] == "exp"
    assert sorted(document["layers"]) == sorted(KERNELS)
    assert load_space(path, KERNELS).layer_choices.keys() == set(KERNELS)


def test_export_rejects_study_without_complete_trial(workdir):
    os.makedirs("mlruns")
    study = optuna.create_study(study_name="empty", storage=f"sqlite:///{workdir}/mlruns/optuna.db", direction="maximize")
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    config, _ = compose_search_config(["study.name=empty"])

    with pytest.raises(UserError, match=r"has no completed trial \(trials by state: \{'PRUNED': 1\}\)"):
        run_export(config)
    assert not os.path.exists("exports")


def test_export_rejects_unknown_study(workdir, finished_study):
    config, _ = compose_search_config([*finished_study[:-3], "study.name=nope"])

    with pytest.raises(UserError, match="Study 'nope' was not found .* the studies there are \\['exp'\\]"):
        run_export(config)


def test_export_rejects_missing_storage(workdir):
    config, _ = compose_search_config(["study.name=x"])

    with pytest.raises(UserError, match="does not exist; run pipeline.search first"):
        run_export(config)
    assert not os.path.exists("mlruns")


def test_export_command_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.export", "study.name=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )

    assert result.returncode == 2
    assert "error: study.storage sqlite:///" in result.stderr
    assert "Traceback" not in result.stderr
