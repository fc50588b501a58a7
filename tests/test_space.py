"""Search-space files: reading, checking against Keras and the model, and sampling."""

from __future__ import annotations

import optuna
import pytest
import yaml

from pipeline.errors import UserError
from pipeline.space import (
    check_kernel_shapes,
    grid,
    load_space,
    sample_from_params,
    space_document,
    suggest,
)

SEED_CNN_KERNELS = ["conv1", "conv2", "dense1", "output"]
DEFAULT_CHOICES = [
    "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
    "lecun_normal", "lecun_uniform", "random_normal", "orthogonal",
]


def write_space(tmp_path, content) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def test_load_space_default_file():
    space = load_space("default", SEED_CNN_KERNELS)

    assert list(space.layer_choices) == SEED_CNN_KERNELS
    for layer in SEED_CNN_KERNELS:
        assert list(space.layer_choices[layer]) == DEFAULT_CHOICES
    assert space.hyperparameters == ()


def test_load_space_learning_rate_file():
    space = load_space("with_learning_rate", SEED_CNN_KERNELS)
    (learning_rate,) = space.hyperparameters

    assert learning_rate.name == "learning_rate"
    assert learning_rate.type == "float"
    assert learning_rate.log is True
    assert learning_rate.low < learning_rate.high


def test_load_space_layer_override(tmp_path):
    path = write_space(tmp_path, {"default_choices": ["he_normal", "orthogonal"], "layers": {"output": ["glorot_uniform"]}})
    space = load_space(path, SEED_CNN_KERNELS)

    assert space.layer_choices["conv1"] == ("he_normal", "orthogonal")
    assert space.layer_choices["output"] == ("glorot_uniform",)


def test_load_space_labelled_initializer(tmp_path):
    path = write_space(tmp_path, {
        "initializers": {"ortho_relu": {"name": "orthogonal", "args": {"gain": 1.4142135623730951}}},
        "default_choices": ["ortho_relu", "he_normal"],
    })
    space = load_space(path, SEED_CNN_KERNELS)
    choice = space.initializers["ortho_relu"]

    assert choice.name == "orthogonal"
    assert choice.args == {"gain": 1.4142135623730951}
    assert choice.keras_config() == {"class_name": "orthogonal", "config": {"gain": 1.4142135623730951}}


def test_load_space_relu_scaled_file():
    space = load_space("relu_scaled", SEED_CNN_KERNELS)
    check_kernel_shapes(space, {"conv1": (3, 3, 3, 32), "conv2": (3, 3, 32, 64), "dense1": (4096, 128), "output": (128, 10)})

    assert space.initializers["delta_orthogonal_gain_sqrt2"].name == "delta_orthogonal"
    assert space.initializers["lsuv"].name == "lsuv"

    assert space.initializers["orthogonal_gain_sqrt2"].args["gain"] == pytest.approx(2 ** 0.5)
    assert space.initializers["random_normal_std0.01"].args["stddev"] == 0.01


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"default_choices": ["he_normal", "kaiming_magic"]}, "'kaiming_magic'"),
        ({"default_choices": []}, "must be a non-empty list"),
        ({"default_choices": ["he_normal"], "layers": {"conv9": ["he_normal"]}}, "layers ['conv9'] that the model lacks"),
        ({"default_choices": ["he_normal"], "layers": {"pool1": ["he_normal"]}}, "layers ['pool1']"),
        ({"layers": {"conv1": ["he_normal"]}}, "Layer 'conv2' has no initializer choices"),
        ({"initializers": {"bad": {"name": "orthogonal", "args": {"gian": 2.0}}}, "default_choices": ["bad"]}, "Initializer 'bad'"),
        ({"initializers": {"bad": "orthogonal"}, "default_choices": ["bad"]}, "must be a mapping with a Keras initializer `name`"),
        ({"default_choices": ["he_normal", "he_normal"]}, "lists a label twice"),
        ({"default_choices": ["he_normal"], "colour": "blue"}, "unknown keys ['colour']"),
        ({"default_choices": ["he_normal"], "hyperparameters": {"dropout": 0.5}}, "Hyperparameter 'dropout'"),
        ({"default_choices": ["he_normal"], "hyperparameters": {"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}}, "low > 0 when log is true"),
        ({"default_choices": ["he_normal"], "hyperparameters": {"learning_rate": {"type": "beta"}}}, "has type 'beta'"),
        ("- he_normal\n- orthogonal\n", "must contain a mapping"),
        ("default_choices: [he_normal\n", "could not be read as YAML"),
    ],
)
def test_load_space_rejects_bad_file(tmp_path, content, expected):
    path = write_space(tmp_path, content)

    with pytest.raises(UserError) as caught:
        load_space(path, SEED_CNN_KERNELS)
    assert expected in str(caught.value)


def test_load_space_missing_file():
    with pytest.raises(UserError, match="not found; set space= to one of .*default"):
        load_space("no_such_space", SEED_CNN_KERNELS)


def test_check_kernel_shapes_rejects_identity_on_conv(tmp_path):
    path = write_space(tmp_path, {"default_choices": ["he_normal", "identity"]})
    space = load_space(path, ["conv1"])

    with pytest.raises(UserError, match="'identity' cannot initialize layer 'conv1'"):
        check_kernel_shapes(space, {"conv1": (3, 3, 3, 32)})


def test_suggest_param_names():
    space = load_space("with_learning_rate", SEED_CNN_KERNELS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    sample = suggest(trial, space)

    assert sorted(trial.params) == sorted([f"{layer}.kernel_initializer" for layer in SEED_CNN_KERNELS] + ["learning_rate"])
    assert set(sample.initializers.values()) <= set(DEFAULT_CHOICES)
    assert 1e-4 <= sample.hyperparameters["learning_rate"] <= 1e-2


def test_grid_lists_every_choice():
    space = load_space("default", SEED_CNN_KERNELS)

    assert grid(space) == {f"{layer}.kernel_initializer": DEFAULT_CHOICES for layer in SEED_CNN_KERNELS}


def test_grid_rejects_continuous():
    space = load_space("with_learning_rate", SEED_CNN_KERNELS)

    with pytest.raises(UserError, match="cannot search the continuous hyperparameter 'learning_rate'"):
        grid(space)


def test_space_document_round_trip(tmp_path):
    space = load_space("relu_scaled", SEED_CNN_KERNELS)
    params = {
        "conv1.kernel_initializer": "orthogonal_gain_sqrt2",
        "conv2.kernel_initializer": "he_normal",
        "dense1.kernel_initializer": "random_normal_std0.01",
        "output.kernel_initializer": "glorot_uniform",
    }
    sample = sample_from_params(space, params)
    document = space_document(space, sample, {"study": "s", "trial": 3})
    exported = load_space(write_space(tmp_path, document), SEED_CNN_KERNELS)

    assert {layer: labels for layer, labels in exported.layer_choices.items()} == {
        "conv1": ("orthogonal_gain_sqrt2",), "conv2": ("he_normal",),
        "dense1": ("random_normal_std0.01",), "output": ("glorot_uniform",),
    }
    assert exported.initializers["orthogonal_gain_sqrt2"] == space.initializers["orthogonal_gain_sqrt2"]
    assert exported.initializers["random_normal_std0.01"] == space.initializers["random_normal_std0.01"]
