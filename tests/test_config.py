"""Hydra composition and overrides through the compose API, and value validation."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from pipeline.config import absolute_path, register_configs, to_object, validate
from pipeline.errors import UserError

register_configs()


def compose_config(overrides: list[str] | None = None):
    with initialize(version_base="1.3", config_path="../conf"):
        return compose(config_name="config", overrides=overrides or [])


def test_compose_defaults():
    config = to_object(compose_config())

    assert config.model.name == "seed_cnn"
    assert config.study.name == "initializers-seed_cnn"
    assert config.study.storage == "sqlite:///mlruns/optuna.db"
    assert config.tracking.uri == "sqlite:///mlruns/mlflow.db"
    assert config.data.path is None
    assert config.space == "default"
    assert (config.study.pruner, config.study.percentile, config.study.n_startup_trials) == ("percentile", 25.0, 5)
    validate(config)


def test_compose_seed_cnn_layers_exact():
    config = to_object(compose_config())
    layers = [(layer.name, layer.type, layer.filters, layer.kernel_size, layer.units, layer.activation) for layer in config.model.layers]

    assert layers == [
        ("conv1", "conv2d", 32, 3, None, "relu"),
        ("pool1", "max_pool", None, None, None, None),
        ("conv2", "conv2d", 64, 3, None, "relu"),
        ("pool2", "max_pool", None, None, None, None),
        ("flatten", "flatten", None, None, None, None),
        ("dense1", "dense", None, None, 128, "relu"),
        ("output", "dense", None, None, 10, "softmax"),
    ]


def test_compose_overrides():
    config = to_object(compose_config([
        "model=plain_deep", "train=sgd", "train.epochs=5", "study.n_trials=7",
        "study.pruner=hyperband", "data.train_subset=100", "space=with_learning_rate",
    ]))

    assert config.model.name == "plain_deep"
    assert config.study.name == "initializers-plain_deep"
    assert config.train.optimizer == "sgd"
    assert config.train.epochs == 5
    assert config.study.n_trials == 7
    assert config.study.pruner == "hyperband"
    assert config.data.train_subset == 100
    assert config.space == "with_learning_rate"


def test_compose_plain_deep_has_ten_plus_convs():
    config = to_object(compose_config(["model=plain_deep"]))
    convs = [layer for layer in config.model.layers if layer.type == "conv2d"]

    assert len(convs) >= 10
    assert all(layer.type != "batch_normalization" for layer in config.model.layers)


def test_compose_wrong_type_rejected():
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_config(["train.epochs=three"])


def test_compose_unknown_model_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_config(["model=resnet9000"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=-1", "train.epochs must be a positive number but got -1"),
        ("train.learning_rate=0", "train.learning_rate must be a positive number"),
        ("study.sampler=cmaes", "study.sampler must be one of tpe, random, grid but got 'cmaes'"),
        ("study.pruner=patient", "study.pruner must be one of median, percentile, successive_halving, hyperband, none but got 'patient'"),
        ("study.percentile=0", "study.percentile must be above 0 and at most 100"),
        ("study.percentile=150", "study.percentile must be above 0 and at most 100"),
        ("data.validation_fraction=1.5", "data.validation_fraction must be between 0 and 1"),
        ("train.optimizer=lbfgs", "train.optimizer must be one of"),
        ("export.format=toml", "export.format must be one of yaml, json"),
        ("data.format=hdf5", "data.format must be one of"),
    ],
)
def test_validate_rejects_bad_value(override, expected):
    config = to_object(compose_config([override]))

    with pytest.raises(UserError) as caught:
        validate(config)
    assert expected in str(caught.value)


def test_validate_rejects_no_budget():
    config = to_object(compose_config(["study.n_trials=null"]))

    with pytest.raises(UserError, match="study.n_trials and study.timeout are both null"):
        validate(config)


def test_validate_rejects_duplicate_layer_name():
    config = to_object(compose_config())
    config.model.layers[2].name = "conv1"

    with pytest.raises(UserError, match="two layers named 'conv1'"):
        validate(config)


def test_validate_rejects_non_softmax_output():
    config = to_object(compose_config())
    config.model.layers[-1].activation = "relu"

    with pytest.raises(UserError, match="must be a dense layer with softmax"):
        validate(config)


def test_absolute_path_uses_start_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert absolute_path("mlruns/x.db") == os.path.join(str(tmp_path), "mlruns", "x.db")
    assert absolute_path("/abs/x.db") == "/abs/x.db"
