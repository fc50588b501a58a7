"""Storage URLs, samplers, pruners and the study budget, on real SQLite and journal files."""

from __future__ import annotations

import os
import stat

import optuna
import pytest

from pipeline.config import StudyConfig
from pipeline.errors import UserError
from pipeline.study import (
    check_storage_url,
    create_pruner,
    create_sampler,
    create_storage,
    open_study,
    resolve_storage_url,
)


def study_config(**values) -> StudyConfig:
    return StudyConfig(name="s", **values)


def test_resolve_storage_url_relative(workdir):
    assert resolve_storage_url("sqlite:///mlruns/optuna.db") == f"sqlite:///{workdir}/mlruns/optuna.db"
    assert resolve_storage_url("journal:mlruns/j.log") == f"journal:{workdir}/mlruns/j.log"
    assert resolve_storage_url("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite//mlruns/optuna.db", "is not a valid storage URL"),
        ("not a url", "is not a valid storage URL"),
        ("sqlite://", "has no database file"),
        ("journal:", "needs a file path, such as journal:mlruns/optuna.journal"),
    ],
)
def test_check_storage_url_rejects(url, expected):
    with pytest.raises(UserError, match=expected):
        check_storage_url(url)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any folder, so an unwritable folder cannot be made")
def test_check_storage_url_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)

    with pytest.raises(UserError, match="cannot be written"):
        check_storage_url(f"sqlite:///{locked}/sub/optuna.db")


def test_check_storage_url_file_as_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")

    with pytest.raises(UserError, match="cannot be written"):
        check_storage_url(f"sqlite:///{blocker}/optuna.db")


def test_check_storage_url_accepts_new_sqlite(tmp_path):
    check_storage_url(f"sqlite:///{tmp_path}/new/optuna.db")

    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("name", "expected"), [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler), ("grid", optuna.samplers.GridSampler)])
def test_create_sampler_types(name, expected):
    sampler = create_sampler(study_config(sampler=name), lambda: {"a": [1, 2]}, seed_offset=0)

    assert isinstance(sampler, expected)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_create_pruner_types(name, expected):
    assert isinstance(create_pruner(study_config(pruner=name)), expected)


@pytest.mark.parametrize(("pruner", "percentile", "pruned"), [("median", 50.0, False), ("percentile", 25.0, True)])
def test_create_pruner_percentile_keeps_top_share(pruner, percentile, pruned):
    study = optuna.create_study(
        direction="maximize", pruner=create_pruner(study_config(pruner=pruner, percentile=percentile, n_startup_trials=4))
    )
    for value in (0.1, 0.2, 0.3, 0.4):
        trial = study.ask()
        trial.report(value, 0)
        study.tell(trial, value)

    trial = study.ask()
    trial.report(0.3, 0)

    # Median of the four values: 0.25. Their 75th percentile, the bar for the top 25%: 0.325.
    assert bool(trial.should_prune()) is pruned


def test_create_sampler_seed_offset_changes_draws():
    draws = []
    for offset in (0, 0, 5):
        study = optuna.create_study(sampler=create_sampler(study_config(sampler="random", seed=3), None, seed_offset=offset))
        draws.append([study.ask().suggest_float("x", 0, 1) for _ in range(3)])

    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_open_study_rejects_minimizing_study(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="s", storage=url, direction="minimize")

    with pytest.raises(UserError, match="already exists and minimizes"):
        open_study(study_config(), create_storage(url), create_pruner(study_config()))
