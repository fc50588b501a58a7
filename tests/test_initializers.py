"""Tests for the delta-orthogonal and LSUV initializers, their serialization and ``get``."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline import initializers
from pipeline.config import LayerConfig, ModelConfig
from pipeline.errors import UserError
from pipeline.initializers import LSUV, DeltaOrthogonal, apply_lsuv, get, needs_data
from pipeline.model import build_model
from pipeline.space import InitializerChoice


def _numpy(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


def _lsuv_model(seed: int = 0) -> keras.Model:
    """Build conv(LSUV) -> conv(he_normal) -> conv(LSUV) -> pool -> dense softmax(LSUV)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=LSUV(), name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer="he_normal", name="conv2")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=LSUV(), name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, activation="softmax", kernel_initializer=LSUV(), name="output")(x)
    return keras.Model(inputs, outputs)


def _batch(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# DeltaOrthogonal


@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (3, 3, 16, 8), (5, 5, 4, 4), (3, 3, 8, 16)])
@pytest.mark.parametrize("gain", [1.0, math.sqrt(2.0)])
def test_delta_orthogonal_centre_is_orthogonal(shape, gain):
    kernel = _numpy(DeltaOrthogonal(gain=gain, seed=1)(shape))
    kh, kw, c_in, c_out = shape
    centre = kernel[kh // 2, kw // 2]

    gram = centre.T @ centre if c_in >= c_out else centre @ centre.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(c_in, c_out)), atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (5, 5, 4, 8), (3, 5, 6, 6)])
def test_delta_orthogonal_other_taps_zero(shape):
    kernel = _numpy(DeltaOrthogonal(seed=2)(shape))
    mask = np.ones(shape[:2], dtype=bool)
    mask[shape[0] // 2, shape[1] // 2] = False

    assert kernel.shape == shape
    assert np.all(kernel[mask] == 0.0)
    assert np.any(kernel[shape[0] // 2, shape[1] // 2] != 0.0)


def test_delta_orthogonal_even_kernel_tap():
    kernel = _numpy(DeltaOrthogonal(seed=3)((4, 2, 6, 6)))
    nonzero_taps = {(i, j) for i in range(4) for j in range(2) if np.any(kernel[i, j] != 0.0)}

    assert nonzero_taps == {(1, 0)}


@pytest.mark.parametrize("kernel_size", [3, 4])
def test_delta_orthogonal_conv_preserves_norm(kernel_size):
    conv = keras.layers.Conv2D(
        16, kernel_size, padding="same", use_bias=False, kernel_initializer=DeltaOrthogonal(seed=4)
    )
    x = _batch((2, 10, 10, 16))
    y = _numpy(conv(x))

    interior_in = np.linalg.norm(x[:, 1:-2, 1:-2, :])
    interior_out = np.linalg.norm(y[:, 1:-2, 1:-2, :])
    assert interior_out == pytest.approx(interior_in, rel=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-4, err_msg="per-pixel norms differ"
    )


def test_delta_orthogonal_dense_shape():
    matrix = _numpy(DeltaOrthogonal(gain=2.0, seed=5)((12, 7)))

    np.testing.assert_allclose(matrix.T @ matrix, 4.0 * np.eye(7), atol=1e-5)


def test_delta_orthogonal_rejects_rank_one():
    with pytest.raises(ValueError, match="rank 2"):
        DeltaOrthogonal()((16,))


@pytest.mark.parametrize("gain, error", [(-1.0, ValueError), (0.0, ValueError), (math.inf, ValueError), ("2", TypeError)])
def test_custom_initializers_reject_bad_gain(gain, error):
    with pytest.raises(error, match="gain"):
        DeltaOrthogonal(gain=gain)
    with pytest.raises(error, match="gain"):
        LSUV(gain=gain)


def test_delta_orthogonal_integer_seed_repeats():
    first = _numpy(DeltaOrthogonal(seed=7)((3, 3, 8, 8)))
    second = _numpy(DeltaOrthogonal(seed=7)((3, 3, 8, 8)))
    other = _numpy(DeltaOrthogonal(seed=8)((3, 3, 8, 8)))

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_delta_orthogonal_global_seed_reproducible():
    keras.utils.set_random_seed(11)
    first = _numpy(DeltaOrthogonal()((3, 3, 8, 8)))
    keras.utils.set_random_seed(11)
    second = _numpy(DeltaOrthogonal()((3, 3, 8, 8)))
    keras.utils.set_random_seed(12)
    other = _numpy(DeltaOrthogonal()((3, 3, 8, 8)))

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


# LSUV


def test_lsuv_initializer_is_orthogonal():
    matrix = _numpy(LSUV(seed=1)((3, 3, 4, 8))).reshape((36, 8))

    np.testing.assert_allclose(matrix.T @ matrix, np.eye(8), atol=1e-5)


def test_apply_lsuv_reaches_unit_std():
    model = _lsuv_model()
    batch = _batch((32, 8, 8, 3))

    stds = apply_lsuv(model, batch, tolerance=0.05)

    assert set(stds) == {"conv1", "conv3", "output"}
    probe = keras.Model(model.inputs[0], [model.get_layer(name).output for name in ("conv1", "conv3", "gap")])
    conv1, conv3, pooled = (_numpy(out) for out in probe(batch))
    assert abs(conv1.std() - 1.0) <= 0.05
    assert abs(conv3.std() - 1.0) <= 0.05
    assert stds["conv1"] == pytest.approx(conv1.std(), rel=1e-4)
    assert stds["conv3"] == pytest.approx(conv3.std(), rel=1e-4)

    output = model.get_layer("output")
    logits = pooled @ _numpy(output.kernel) + _numpy(output.bias)
    assert abs(logits.std() - 1.0) <= 0.05, "a softmax layer is scaled on its logits"


def test_apply_lsuv_other_target_std():
    model = _lsuv_model(seed=1)
    batch = _batch((16, 8, 8, 3), seed=1)

    stds = apply_lsuv(model, batch, target_std=2.0, tolerance=0.02)

    for name, std in stds.items():
        assert abs(std - 2.0) <= 0.02, name


def test_apply_lsuv_leaves_other_layers():
    model = _lsuv_model(seed=2)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}

    apply_lsuv(model, _batch((16, 8, 8, 3), seed=2))

    for name in ("conv2",):
        for old, new in zip(before[name], model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(old, new)
    for name in ("conv1", "conv3", "output"):
        old_bias, new_bias = before[name][1], model.get_layer(name).get_weights()[1]
        np.testing.assert_array_equal(old_bias, new_bias)
    assert not np.array_equal(before["conv1"][0], model.get_layer("conv1").get_weights()[0])


def test_apply_lsuv_on_build_model():
    config = ModelConfig(
        name="tiny",
        input_shape=[8, 8, 3],
        layers=[
            LayerConfig(name="conv1", type="conv2d", filters=4, kernel_size=3, activation="relu"),
            LayerConfig(name="conv2", type="conv2d", filters=4, kernel_size=3, activation="relu"),
            LayerConfig(name="pool", type="max_pool", pool_size=2),
            LayerConfig(name="flat", type="flatten"),
            LayerConfig(name="output", type="dense", units=10, activation="softmax"),
        ],
    )
    lsuv = {"class_name": "pipeline>LSUV", "config": {}}
    model = build_model(config, {"conv1": lsuv, "conv2": lsuv}, num_classes=10)

    stds = apply_lsuv(model, _batch((16, 8, 8, 3), seed=3))

    assert needs_data(model)
    assert sorted(stds) == ["conv1", "conv2"]
    assert all(abs(std - 1.0) <= 0.1 for std in stds.values())


def test_needs_data():
    assert needs_data(_lsuv_model())

    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer=DeltaOrthogonal())(inputs))
    assert not needs_data(plain)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_std": 0.0}, "target_std must be"),
        ({"tolerance": -0.1}, "tolerance must be"),
        ({"max_iterations": 0}, "max_iterations must be"),
    ],
)
def test_apply_lsuv_rejects_bad_arguments(kwargs, message):
    with pytest.raises(UserError, match=message):
        apply_lsuv(_lsuv_model(), _batch((4, 8, 8, 3)), **kwargs)


def test_apply_lsuv_rejects_wrong_batch_shape():
    with pytest.raises(UserError, match=r"batch must have shape \(examples, 8, 8, 3\)"):
        apply_lsuv(_lsuv_model(), _batch((4, 8, 8, 1)))


# Serialization


def test_custom_initializers_save_and_load(tmp_path):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=DeltaOrthogonal(gain=1.5, seed=3), name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, kernel_initializer=LSUV(gain=0.5, seed=4), name="dense")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"

    model.save(path)
    loaded = keras.saving.load_model(path)

    conv_init = loaded.get_layer("conv").kernel_initializer
    dense_init = loaded.get_layer("dense").kernel_initializer
    assert isinstance(conv_init, DeltaOrthogonal)
    assert isinstance(dense_init, LSUV)
    assert conv_init.get_config() == {"gain": 1.5, "seed": 3}
    assert dense_init.get_config() == {"gain": 0.5, "seed": 4}
    x = _batch((2, 6, 6, 3))
    np.testing.assert_allclose(_numpy(loaded(x)), _numpy(model(x)), rtol=1e-6)


def test_from_config_round_trip():
    for initializer in (DeltaOrthogonal(gain=2.0, seed=1), LSUV(gain=1.0, seed=None)):
        config = keras.initializers.serialize(initializer)
        restored = keras.initializers.deserialize(config)

        assert type(restored) is type(initializer)
        assert restored.get_config() == initializer.get_config()


# get


@pytest.mark.parametrize(
    "identifier, cls",
    [
        ("delta_orthogonal", DeltaOrthogonal),
        ("lsuv", LSUV),
        ("DeltaOrthogonal", DeltaOrthogonal),
        ({"class_name": "delta_orthogonal", "config": {"gain": 2.0, "seed": 1}}, DeltaOrthogonal),
        ({"class_name": "lsuv", "config": {}}, LSUV),
        ({"class_name": "pipeline>LSUV", "config": {"gain": 1.0}}, LSUV),
        ("he_normal", keras.initializers.HeNormal),
        ({"class_name": "orthogonal", "config": {"gain": 2.0}}, keras.initializers.Orthogonal),
        ({"class_name": "random_normal", "config": {"stddev": 0.01}}, keras.initializers.RandomNormal),
    ],
)
def test_get_resolves_names(identifier, cls):
    assert type(get(identifier)) is cls


def test_get_accepts_space_choice():
    choice = InitializerChoice(label="delta_sqrt2", name="delta_orthogonal", args={"gain": math.sqrt(2.0)})

    initializer = get(choice.keras_config())

    assert isinstance(initializer, DeltaOrthogonal)
    assert initializer.gain == pytest.approx(math.sqrt(2.0))


def test_get_passes_instance_through():
    instance = LSUV()

    assert get(instance) is instance


@pytest.mark.parametrize(
    "identifier, error, message",
    [
        ("no_such_init", ValueError, "Unknown initializer 'no_such_init'"),
        ({"class_name": "no_such_init", "config": {}}, ValueError, "delta_orthogonal, lsuv"),
        ({"class_name": "lsuv", "config": {"stddev": 1.0}}, TypeError, "accepts the arguments gain and seed"),
        ({"class_name": "he_normal", "config": {"gain": 1.0}}, TypeError, "does not accept the arguments"),
        ({"class_name": "delta_orthogonal", "config": {"gain": -2.0}}, ValueError, "gain must be"),
        ({"config": {}}, ValueError, "'class_name' string"),
        ({"class_name": "lsuv", "config": [1]}, TypeError, "must be a mapping"),
        (5, TypeError, "got 5 of type int"),
    ],
)
def test_get_rejects_bad_identifiers(identifier, error, message):
    with pytest.raises(error, match=message):
        get(identifier)


def test_registry_names():
    assert initializers.CUSTOM_INITIALIZERS == {"delta_orthogonal": DeltaOrthogonal, "lsuv": LSUV}
