"""The functional-API builder: structure and the initializer given to every layer."""

from __future__ import annotations

import math

import keras
import pytest

from pipeline.config import LayerConfig, ModelConfig
from pipeline.errors import UserError
from pipeline.model import build_model, kernel_layers, kernel_shapes, reinitialize


def seed_cnn() -> ModelConfig:
    return ModelConfig(
        name="seed_cnn",
        layers=[
            LayerConfig(name="conv1", type="conv2d", filters=32, kernel_size=3, activation="relu"),
            LayerConfig(name="pool1", type="max_pool", pool_size=2),
            LayerConfig(name="conv2", type="conv2d", filters=64, kernel_size=3, activation="relu"),
            LayerConfig(name="pool2", type="max_pool", pool_size=2),
            LayerConfig(name="flatten", type="flatten"),
            LayerConfig(name="dense1", type="dense", units=128, activation="relu"),
            LayerConfig(name="output", type="dense", units=10, activation="softmax"),
        ],
    )


def test_build_model_seed_cnn_structure():
    model = build_model(seed_cnn())
    layers = model.layers[1:]

    assert [layer.name for layer in layers] == ["conv1", "pool1", "conv2", "pool2", "flatten", "dense1", "output"]
    assert isinstance(layers[0], keras.layers.Conv2D)
    assert layers[0].filters == 32
    assert layers[0].kernel_size == (3, 3)
    assert layers[0].padding == "same"
    assert layers[2].filters == 64
    assert isinstance(layers[1], keras.layers.MaxPooling2D)
    assert layers[1].pool_size == (2, 2)
    assert layers[5].units == 128
    assert model.output_shape == (None, 10)
    assert model.count_params() == 545_098


def test_build_model_applies_each_initializer():
    chosen = {
        "conv1": {"class_name": "he_normal", "config": {}},
        "conv2": {"class_name": "orthogonal", "config": {"gain": math.sqrt(2)}},
        "dense1": {"class_name": "random_normal", "config": {"stddev": 0.01}},
        "output": {"class_name": "lecun_uniform", "config": {}},
    }
    model = build_model(seed_cnn(), chosen)

    expected_classes = {
        "conv1": keras.initializers.HeNormal,
        "conv2": keras.initializers.Orthogonal,
        "dense1": keras.initializers.RandomNormal,
        "output": keras.initializers.LecunUniform,
    }
    for layer, expected in expected_classes.items():
        assert type(model.get_layer(layer).kernel_initializer) is expected, layer
    assert model.get_layer("conv2").kernel_initializer.get_config()["gain"] == pytest.approx(math.sqrt(2))
    assert model.get_layer("dense1").kernel_initializer.get_config()["stddev"] == 0.01
    assert model.get_layer("dense1").kernel_initializer.get_config()["mean"] == 0.0


def test_build_model_weights_follow_initializer():
    keras.utils.set_random_seed(0)
    model = build_model(seed_cnn(), {"dense1": {"class_name": "random_normal", "config": {"stddev": 0.01}}, "output": {"class_name": "zeros", "config": {}}})
    dense_std = float(keras.ops.std(model.get_layer("dense1").kernel))

    assert dense_std == pytest.approx(0.01, rel=0.05)
    assert float(keras.ops.max(keras.ops.abs(model.get_layer("output").kernel))) == 0.0


def test_build_model_unlisted_layer_keeps_keras_default():
    model = build_model(seed_cnn(), {"conv1": {"class_name": "he_normal", "config": {}}})

    assert type(model.get_layer("conv2").kernel_initializer) is keras.initializers.GlorotUniform


def test_build_model_rejects_unknown_layer():
    with pytest.raises(UserError, match=r"layers \['conv7'\], which model 'seed_cnn' lacks"):
        build_model(seed_cnn(), {"conv7": {"class_name": "he_normal", "config": {}}})


def test_build_model_rejects_missing_flatten():
    config = seed_cnn()
    del config.layers[4]

    with pytest.raises(UserError, match="add a flatten or global_average_pool layer"):
        build_model(config)


def test_build_model_rejects_class_count_mismatch():
    with pytest.raises(UserError, match="has 10 output units but the data has 3 classes"):
        build_model(seed_cnn(), num_classes=3)


def test_build_model_rejects_pool_larger_than_input():
    config = seed_cnn()
    config.input_shape = [2, 2, 3]

    with pytest.raises(UserError, match="does not fit its input"):
        build_model(config)


def test_kernel_shapes_seed_cnn():
    shapes = kernel_shapes(seed_cnn())

    assert kernel_layers(seed_cnn()) == ["conv1", "conv2", "dense1", "output"]
    assert shapes == {"conv1": (3, 3, 3, 32), "conv2": (3, 3, 32, 64), "dense1": (4096, 128), "output": (128, 10)}


def test_reinitialize_replaces_initializers_and_weights():
    config = seed_cnn()
    model = build_model(config, {"conv1": {"class_name": "he_normal", "config": {}}})
    model.get_layer("conv1").bias.assign(keras.ops.ones((32,)))
    reinitialize(model, config, {"conv1": {"class_name": "zeros", "config": {}}, "dense1": {"class_name": "random_normal", "config": {"stddev": 0.01}}})

    assert type(model.get_layer("conv1").kernel_initializer) is keras.initializers.Zeros
    assert float(keras.ops.max(keras.ops.abs(model.get_layer("conv1").kernel))) == 0.0
    assert float(keras.ops.max(keras.ops.abs(model.get_layer("conv1").bias))) == 0.0
    assert float(keras.ops.std(model.get_layer("dense1").kernel)) == pytest.approx(0.01, rel=0.05)
    assert type(model.get_layer("output").kernel_initializer) is keras.initializers.GlorotUniform
