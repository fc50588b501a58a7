"""Tests for signal-propagation measurement at initialization."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.diagnostics import (
    VERDICTS,
    LayerSignal,
    SignalReport,
    measure_signal,
    report_metrics,
    report_table,
)
from pipeline.errors import UserError

DEPTH = 8
CONV_NAMES = [f"conv{index}" for index in range(1, DEPTH + 1)]
KERNEL_NAMES = CONV_NAMES + ["output"]


def _plain_cnn(initializer, bias: float = 0.0, seed: int = 0) -> keras.Model:
    """Build 8 ReLU conv layers of 16 filters, global average pooling and a softmax layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3), name="image")
    x = inputs
    for name in CONV_NAMES:
        x = keras.layers.Conv2D(
            16,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=keras.initializers.get(initializer),
            bias_initializer=keras.initializers.Constant(bias),
            name=name,
        )(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs)


def _data(count: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 12, 12, 3)).astype("float32"), rng.integers(0, 10, count)


def _tiny_dense() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="output")(hidden)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "initializer, verdict",
    [
        ("he_normal", "ok"),
        ({"class_name": "random_normal", "config": {"stddev": 0.001}}, "vanishing"),
        ({"class_name": "random_normal", "config": {"stddev": 1.0}}, "exploding"),
        ("zeros", "dead"),
    ],
)
def test_verdict_per_initializer(initializer, verdict):
    x, y = _data()

    report = measure_signal(_plain_cnn(initializer), x, y, KERNEL_NAMES)

    assert report.verdict == verdict
    assert report.verdict in VERDICTS


def test_he_normal_std_ratio_near_one():
    x, y = _data()

    report = measure_signal(_plain_cnn("he_normal"), x, y, KERNEL_NAMES)

    assert 0.3 < report.std_ratio < 3.0
    assert 0.0 < report.gradient_ratio < math.inf


def test_vanishing_and_exploding_ratios():
    x, y = _data()

    small = measure_signal(_plain_cnn({"class_name": "random_normal", "config": {"stddev": 0.001}}), x, y, KERNEL_NAMES)
    large = measure_signal(_plain_cnn({"class_name": "random_normal", "config": {"stddev": 1.0}}), x, y, KERNEL_NAMES)

    assert small.std_ratio < 1e-6
    assert large.std_ratio > 1e4


def test_zeros_gives_nan_ratios():
    x, y = _data()

    report = measure_signal(_plain_cnn("zeros"), x, y, KERNEL_NAMES)

    assert math.isnan(report.std_ratio)
    assert all(signal.dead_fraction == 1.0 for signal in report.layers[:-1])


def test_ratio_uses_last_hidden_layer():
    x, y = _data()

    report = measure_signal(_plain_cnn("he_normal"), x, y, KERNEL_NAMES)
    by_name = {signal.layer: signal for signal in report.layers}

    assert report.reference_layer == "conv8"
    assert report.std_ratio == pytest.approx(by_name["conv8"].activation_std / by_name["conv1"].activation_std)
    assert report.gradient_ratio == pytest.approx(by_name["conv1"].gradient_norm / by_name["conv8"].gradient_norm)


def test_large_negative_bias_is_dead():
    x, y = _data()

    report = measure_signal(_plain_cnn("he_normal", bias=-100.0), x, y, KERNEL_NAMES)

    assert report.verdict == "dead"
    assert report.layers[0].dead_fraction == 1.0


def test_dead_fraction_matches_hand_count():
    model = _tiny_dense()
    hidden = model.get_layer("hidden")
    kernel = np.array(
        [[1.0, -1.0, 0.5, 0.0], [1.0, -1.0, -0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        dtype="float32",
    )
    bias = np.array([0.0, -10.0, 0.0, -1.0], dtype="float32")
    hidden.set_weights([kernel, bias])
    x = np.abs(np.random.default_rng(4).standard_normal((16, 5))).astype("float32")
    y = np.zeros(16, dtype=int)

    report = measure_signal(model, x, y, ["hidden", "output"])

    expected_output = np.maximum(x @ kernel + bias, 0.0)
    expected = float(np.mean(np.all(expected_output <= 0.0, axis=0)))
    assert expected == 0.5, "units 2 and 4 never fire on non-negative input"
    assert report.layers[0].dead_fraction == expected
    assert report.layers[0].activation_std == pytest.approx(float(np.std(expected_output)), rel=1e-5)


def test_conv_dead_fraction_counts_channels():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(3, 1, activation="relu", name="conv")
    x = conv(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="output")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.array([[[[1.0, -1.0, 1.0]]]], dtype="float32"), np.array([0.0, 0.0, -5.0], dtype="float32")])
    x_data = np.random.default_rng(5).uniform(0.1, 1.0, (8, 4, 4, 1)).astype("float32")

    report = measure_signal(model, x_data, np.zeros(8, dtype=int), ["conv", "output"])

    assert report.layers[0].dead_fraction == pytest.approx(2 / 3)


def test_gradient_norm_matches_tape():
    model = _tiny_dense()
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 5)).astype("float32")
    y = rng.integers(0, 3, 8)

    report = measure_signal(model, x, y, ["hidden", "output"])

    kernels = [model.get_layer("hidden").kernel, model.get_layer("output").kernel]
    with tf.GradientTape() as tape:
        probabilities = model(x)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))
    expected = [float(np.linalg.norm(grad.numpy())) for grad in tape.gradient(loss, kernels)]
    assert report.layers[0].gradient_norm == pytest.approx(expected[0], rel=1e-5)
    assert report.layers[1].gradient_norm == pytest.approx(expected[1], rel=1e-5)
    assert report.gradient_ratio == 1.0, "the hidden layer is both the first and the reference layer"


def test_frozen_kernel_still_gets_gradient():
    model = _tiny_dense()
    model.get_layer("hidden").trainable = False
    x = np.random.default_rng(7).standard_normal((8, 5)).astype("float32")

    report = measure_signal(model, x, np.arange(8) % 3, ["hidden", "output"])

    assert report.layers[0].gradient_norm > 0.0


def test_weights_unchanged_after_measuring():
    model = _plain_cnn("he_normal")
    before = [weight.copy() for weight in model.get_weights()]
    x, y = _data()

    measure_signal(model, x, y, KERNEL_NAMES)

    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert not model.compiled, "measuring must not compile the model"


def test_optimizer_state_unchanged():
    model = _tiny_dense()
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    before = [keras.ops.convert_to_numpy(variable).copy() for variable in model.optimizer.variables]
    x = np.random.default_rng(8).standard_normal((8, 5)).astype("float32")

    measure_signal(model, x, np.arange(8) % 3, ["hidden", "output"])

    after = [keras.ops.convert_to_numpy(variable) for variable in model.optimizer.variables]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)


def test_layers_sorted_into_model_order():
    x, y = _data(8)

    report = measure_signal(_plain_cnn("he_normal"), x, y, ["output", "conv2", "conv1"])

    assert [signal.layer for signal in report.layers] == ["conv1", "conv2", "output"]


def test_metric_names():
    x, y = _data(8)

    report = measure_signal(_plain_cnn("he_normal"), x, y, KERNEL_NAMES)
    metrics = report_metrics(report)

    assert len(metrics) == 3 * len(KERNEL_NAMES) + 3
    assert metrics["init.conv1.activation_std"] == report.layers[0].activation_std
    assert "init.conv1.dead_fraction" in metrics
    assert "init.output.gradient_norm" in metrics
    assert metrics["init.std_ratio"] == report.std_ratio
    assert metrics["init.gradient_ratio"] == report.gradient_ratio
    assert metrics["init.seconds"] == report.seconds
    assert all(isinstance(value, float) for value in metrics.values())


def test_table_shape():
    report = SignalReport(
        layers=(LayerSignal("a", 1.0, 0.0, 2.0), LayerSignal("b", 0.5, 0.25, 1.0)),
        std_ratio=0.5,
        gradient_ratio=2.0,
        verdict="ok",
        seconds=0.1,
    )

    table = report_table(report)

    assert list(table) == ["layer", "activation_std", "dead_fraction", "gradient_norm"]
    assert table["layer"] == ["a", "b"]
    assert table["dead_fraction"] == [0.0, 0.25]
    assert all(len(column) == 2 for column in table.values())


@pytest.mark.parametrize(
    "kernel_layers, message",
    [
        (["conv1", "nope"], "lacks or which have"),
        (["gap"], "lacks or which have"),
        ([], "non-empty list"),
        ("conv1", "non-empty list"),
        (["conv1", "conv1"], "must not repeat"),
    ],
)
def test_rejects_bad_layer_names(kernel_layers, message):
    x, y = _data(4)

    with pytest.raises(UserError, match=message):
        measure_signal(_plain_cnn("he_normal"), x, y, kernel_layers)


@pytest.mark.parametrize(
    "x_shape, y, message",
    [
        ((4, 12, 12, 1), np.zeros(4, dtype=int), r"x must have shape \(examples, 12, 12, 3\)"),
        ((4, 12, 12, 3), np.zeros(5, dtype=int), "y must be 4 integer class labels"),
        ((4, 12, 12, 3), np.zeros(4, dtype=float), "y must be 4 integer class labels"),
        ((4, 12, 12, 3), np.array([0, 1, 2, 10]), "from 0 to 9"),
    ],
)
def test_rejects_bad_batch(x_shape, y, message):
    x = np.zeros(x_shape, dtype="float32")

    with pytest.raises(UserError, match=message):
        measure_signal(_plain_cnn("he_normal"), x, y, KERNEL_NAMES)


_BACKEND_PROBE = """
import json, sys
import keras, numpy as np
from pipeline.diagnostics import measure_signal

weights, out = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
inputs = keras.Input((12, 12, 3))
hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
hidden = keras.layers.GlobalAveragePooling2D()(hidden)
outputs = keras.layers.Dense(10, activation="softmax", name="output")(hidden)
model = keras.Model(inputs, outputs)
model.get_layer("conv").trainable = False
if keras.backend.backend() == "tensorflow":
    model.save_weights(weights)
else:
    model.load_weights(weights)
rng = np.random.default_rng(0)
x = rng.normal(size=(16, 12, 12, 3)).astype("float32")
y = np.arange(16) % 10
report = measure_signal(model, x, y, ["conv", "output"])
json.dump([[layer.activation_std, layer.gradient_norm] for layer in report.layers], open(out, "w"))
"""


def _probe_on_backend(backend: str, folder) -> list:
    import json
    import os
    import subprocess
    import sys

    result = folder / f"{backend}.json"
    environment = {**os.environ, "KERAS_BACKEND": backend}
    completed = subprocess.run(
        [sys.executable, "-c", _BACKEND_PROBE, str(folder / "probe.weights.h5"), str(result)],
        env=environment, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("jax", "the JAX backend needs jax; pip install -e '.[test]' brings it"),
        ("torch", "the PyTorch backend needs torch, which the test extra leaves out because of its size"),
    ],
)
def test_measure_signal_backend_matches_tensorflow(tmp_path, backend, reason):
    pytest.importorskip(backend, reason=reason)

    tensorflow_values = _probe_on_backend("tensorflow", tmp_path)
    backend_values = _probe_on_backend(backend, tmp_path)

    assert all(math.isfinite(gradient) and gradient > 0 for _, gradient in backend_values)
    np.testing.assert_allclose(backend_values, tensorflow_values, rtol=1e-3)
