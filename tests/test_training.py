"""Tests for the input pipeline, the compiled-model reuse and the non-finite loss guard."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import compose_search_config
from pipeline.config import TrainConfig
from pipeline.data import Dataset
from pipeline import training
from pipeline.training import ModelCache, NonFiniteLossError, StopOnNonFiniteLoss, _batches, fit

IMAGES = 50


def numbered_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return images whose pixels all equal the image's index, with that index as the label."""
    x = np.repeat(np.arange(count, dtype=np.float32), 4).reshape(count, 2, 2, 1)
    return x, np.arange(count, dtype=np.int32)


def epoch_labels(dataset) -> list[int]:
    labels = []
    for images, batch_labels in dataset:
        np.testing.assert_array_equal(images.numpy()[:, 0, 0, 0], batch_labels.numpy())
        labels.extend(int(label) for label in batch_labels.numpy())
    return labels


def test_batches_cover_each_image_once():
    x, y = numbered_images(IMAGES)
    dataset = _batches(x, y, batch_size=8, buffer=IMAGES, seed=3, shuffle=True)

    first, second = epoch_labels(dataset), epoch_labels(dataset)

    assert sorted(first) == list(range(IMAGES))
    assert sorted(second) == list(range(IMAGES))
    assert first != list(range(IMAGES))
    assert first != second


def test_batches_same_seed_same_order():
    x, y = numbered_images(IMAGES)

    orders = [epoch_labels(_batches(x, y, batch_size=8, buffer=IMAGES, seed=seed, shuffle=True)) for seed in (3, 3, 4)]

    assert orders[0] == orders[1]
    assert orders[0] != orders[2]


def test_batches_validation_keeps_order():
    x, y = numbered_images(IMAGES)
    dataset = _batches(x, y, batch_size=8, buffer=IMAGES, seed=3, shuffle=False)

    assert epoch_labels(dataset) == list(range(IMAGES))
    assert [len(labels) for _, labels in dataset] == [8] * 6 + [2]


def tiny_dataset(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(40, dtype=np.int32) % 10
    images = rng.normal(size=(40, 32, 32, 3)).astype(np.float32) + labels[:, None, None, None]
    return Dataset(
        x_train=images[:30], y_train=labels[:30], x_val=images[30:], y_val=labels[30:],
        x_test=images[30:], y_test=labels[30:], class_names=tuple(str(index) for index in range(10)),
        mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), source="generated",
    )


def test_model_cache_reuses_compiled_model():
    model_config = compose_search_config([])[0].model
    cache = ModelCache()
    train = TrainConfig(epochs=1, batch_size=10, steps_per_execution=2, progress=False)
    data = tiny_dataset()
    he_normal = {"class_name": "he_normal", "config": {}}
    initializers = {"conv1": he_normal, "conv2": he_normal, "dense1": he_normal, "output": he_normal}

    first = cache.get(model_config, initializers, num_classes=10)
    fit(first, data, train, seed=0, callbacks=[])
    train_function = first.train_function
    second = cache.get(model_config, {**initializers, "conv1": {"class_name": "zeros", "config": {}}}, num_classes=10)
    history = fit(second, data, train, seed=1, callbacks=[])

    assert second is first
    assert second.train_function is train_function
    assert not np.any(second.get_layer("conv1").kernel.numpy())
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]


def test_stop_on_non_finite_loss_raises():
    guard = StopOnNonFiniteLoss()
    guard.on_epoch_end(0, {"loss": 1.5, "val_loss": 2.0})

    with pytest.raises(NonFiniteLossError) as raised:
        guard.on_epoch_end(3, {"loss": 1.5, "val_loss": math.nan})

    assert raised.value.epoch == 3
    assert raised.value.metric == "val_loss"



def test_device_batches_cover_each_image_once_per_epoch():
    pytest.importorskip("jax", reason="device batches need jax; pip install -e '.[test]' brings it")
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    batches = training.DeviceBatches(x, y, batch_size=4, seed=3, shuffle=True)

    first = np.concatenate([np.asarray(batches[index][0])[:, 0] for index in range(len(batches))])
    batches.on_epoch_end()
    second = np.concatenate([np.asarray(batches[index][1]) for index in range(len(batches))])

    assert len(batches) == 3
    assert sorted(first) == list(range(10))
    assert sorted(second) == list(range(10))
    assert list(first) != list(second)


def test_device_batches_keep_validation_order_and_one_copy():
    jax = pytest.importorskip("jax", reason="device batches need jax; pip install -e '.[test]' brings it")
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    y = np.arange(6)
    copies_before = len(training._DEVICE_ARRAYS)
    first = training.DeviceBatches(x, y, batch_size=4, seed=0, shuffle=False)
    second = training.DeviceBatches(x, y, batch_size=4, seed=1, shuffle=False)

    images, labels = first[1]

    assert isinstance(images, jax.Array)
    assert list(np.asarray(labels)) == [4, 5]
    assert list(np.asarray(second[0][1])) == [0, 1, 2, 3]
    assert len(training._DEVICE_ARRAYS) == copies_before + 2
