"""Compile and fit one model: optimizer, input pipeline, seeds and the non-finite loss guard.

This module does not use Optuna or MLflow, so callers pass their callbacks in.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
from typing import Any, Sequence

import keras
import numpy as np

from pipeline.config import TrainConfig

logger = logging.getLogger(__name__)

# The arrays as TensorFlow tensors, converted once per process, because the conversion
# copies them into TensorFlow's memory. Each array is kept too, so its id is not reused.
_TENSORS: dict[int, Any] = {}

# The arrays as JAX arrays on the default device (the GPU where there is one), put there
# once per process. Each array is kept too, so its id is not reused.
_DEVICE_ARRAYS: dict[int, Any] = {}

# Batches the input pipeline prepares ahead of the train step.
_PREFETCH_BATCHES = 2


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss, so the trial cannot give a result."""

    def __init__(self, epoch: int, metric: str, value: float) -> None:
        super().__init__(f"{metric} became {value} at epoch {epoch}")
        self.epoch = epoch
        self.metric = metric
        self.value = value


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise ``NonFiniteLossError`` at the end of an epoch whose loss is NaN or infinite.

    The check runs per epoch, not per batch, to keep the train loop free of host syncs.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        for metric in ("loss", "val_loss"):
            value = logs.get(metric)
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteLossError(epoch, metric, float(value))


def make_optimizer(train: TrainConfig, learning_rate: float, momentum: float) -> keras.optimizers.Optimizer:
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    if train.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate, momentum=momentum)

    raise ValueError(f"train.optimizer must be adam, adamw, sgd or rmsprop but got {train.optimizer!r}")


@functools.lru_cache(maxsize=None)
def _steps_per_execution(requested: int) -> int:
    """Return ``requested``, or 1 on the PyTorch backend, which runs one step per call only; warn once."""
    if requested == 1 or keras.backend.backend() != "torch":
        return requested

    logger.warning(
        "train.steps_per_execution=%d is not supported by Keras on the PyTorch backend; training with 1. "
        "Set train.steps_per_execution=1 to silence this warning.",
        requested,
    )
    return 1


def _compile_or_reset(model: keras.Model, train: TrainConfig, learning_rate: float, momentum: float) -> None:
    """Compile ``model`` once; on later trials zero the optimizer state and set the learning rate.

    Compiling again would trace a new train step, and TensorFlow keeps the memory of
    every traced function until the process ends. Momentum is a constant of the traced
    step, so a different momentum compiles again.
    """
    steps_per_execution = _steps_per_execution(train.steps_per_execution)
    key = (train.optimizer, momentum, train.jit_compile, steps_per_execution)
    if getattr(model, "_pipeline_compile_key", None) == key and model.optimizer.built:
        for variable in model.optimizer.variables:
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
        model.optimizer.learning_rate = learning_rate
        return

    model.compile(
        optimizer=make_optimizer(train, learning_rate, momentum),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=train.jit_compile,
        steps_per_execution=steps_per_execution,
    )
    model._pipeline_compile_key = key


def _converted_once(cache: dict[int, Any], array: np.ndarray, convert: Any) -> Any:
    """Return ``convert(array)``, made on the first call for this array and kept in ``cache``."""
    key = id(array)
    if key not in cache:
        cache[key] = (array, convert(array))
    return cache[key][1]


def _tensor(array: np.ndarray) -> Any:
    import tensorflow as tf

    return _converted_once(_TENSORS, array, tf.constant)


def _batches(x: np.ndarray, y: np.ndarray, batch_size: int, buffer: int, seed: int, shuffle: bool) -> Any:
    """Return a tf.data dataset of ``(x, y)`` batches gathered by index from tensors built once.

    Shuffling the indices, not the images, keeps the shuffle buffer small in memory, so
    a buffer of the whole training set costs 8 bytes per image. tf.data's autotuning
    is off. With it, some fits on TensorFlow 2.21 and a 2-core CPU spent 8 to 10 s more
    after the last epoch, or took up to twice as long for one epoch. A fixed prefetch of
    two batches kept every epoch as fast as the first (seed_cnn on 45,000 images).
    """
    import tensorflow as tf

    images, labels = _tensor(x), _tensor(y)
    indices = tf.data.Dataset.range(len(x))
    if shuffle:
        indices = indices.shuffle(min(buffer, len(x)), seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        indices.batch(batch_size)
        .map(lambda index: (tf.gather(images, index), tf.gather(labels, index)))
        .prefetch(_PREFETCH_BATCHES)
        .with_options(options)
    )


def _device_array(array: np.ndarray) -> Any:
    import jax

    return _converted_once(_DEVICE_ARRAYS, array, jax.device_put)


class DeviceBatches(keras.utils.PyDataset):
    """Batches gathered by index on the device from arrays that stay there (JAX backend).

    The images are put on the device once per process, so a trial copies only each
    batch's indices from host memory. The order is a new permutation each epoch, drawn
    from ``seed``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> None:
        super().__init__()
        self._images, self._labels = _device_array(x), _device_array(y)
        self._count = len(x)
        self._batch_size = batch_size
        self._shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(self._count) if shuffle else np.arange(self._count)

    def __len__(self) -> int:
        return math.ceil(self._count / self._batch_size)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import jax.numpy as jnp

        rows = self._order[index * self._batch_size : (index + 1) * self._batch_size]
        return jnp.take(self._images, rows, axis=0), jnp.take(self._labels, rows, axis=0)

    def on_epoch_end(self) -> None:
        if self._shuffle:
            self._order = self._rng.permutation(self._count)


def _fit_inputs(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, batch_size: int, buffer: int, seed: int) -> dict:
    """Return the keyword arguments of ``fit`` for the data: tf.data on TensorFlow, device arrays on JAX."""
    backend = keras.backend.backend()
    if backend == "jax":
        return {
            "x": DeviceBatches(x, y, batch_size, seed, shuffle=True),
            "validation_data": DeviceBatches(x_val, y_val, batch_size, seed, shuffle=False),
        }

    if backend != "tensorflow":
        # NOTE: on PyTorch every batch is still copied from host memory. Keeping the data
        # on the GPU there is not built, and it is untested on a GPU.
        return {"x": x, "y": y, "batch_size": batch_size, "shuffle": True, "validation_data": (x_val, y_val)}

    return {
        "x": _batches(x, y, batch_size, buffer, seed, shuffle=True),
        "validation_data": _batches(x_val, y_val, batch_size, buffer, seed, shuffle=False),
        "shuffle": False,
    }


def fit(
    model: keras.Model,
    data: Any,
    train: TrainConfig,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback],
    learning_rate: float | None = None,
    momentum: float | None = None,
    batch_size: int | None = None,
) -> dict[str, list[float]]:
    """Compile and train ``model`` on ``data`` (a ``pipeline.data.Dataset``), returning the history.

    Keras calls ``callbacks`` in order, so put ``StopOnNonFiniteLoss`` before a pruning callback.

    ``learning_rate``, ``momentum`` and ``batch_size`` override the train config when a
    search space samples them.
    """
    learning_rate = train.learning_rate if learning_rate is None else learning_rate
    momentum = train.momentum if momentum is None else momentum
    batch_size = train.batch_size if batch_size is None else int(batch_size)

    _compile_or_reset(model, train, learning_rate, momentum)
    inputs = _fit_inputs(data.x_train, data.y_train, data.x_val, data.y_val, batch_size, train.shuffle_buffer, seed)
    history = model.fit(
        epochs=train.epochs,
        callbacks=list(callbacks),
        verbose=0,
        **inputs,
    )
    return {name: [float(value) for value in values] for name, values in history.history.items()}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and the backend, so initial weights and shuffles follow ``seed``.

    With ``deterministic``, TensorFlow also picks deterministic kernels, which makes
    results repeat on the same machine and software; other backends only get the seed.
    """
    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def release_memory() -> None:
    """Free the finished trial's objects; the reused model and its traced step stay.

    Only the young generations are collected. A full collection walks every object that
    TensorFlow and Keras hold and took 0.34 s per trial on seed_cnn. Python still runs
    its own full collections as objects accumulate.
    """
    gc.collect(1)


class ModelCache:
    """One built and compiled model per process, given fresh weights for every trial."""

    def __init__(self) -> None:
        self._model: keras.Model | None = None
        self._config: Any = None

    def get(self, config: Any, initializers: dict, num_classes: int) -> keras.Model:
        from pipeline.model import build_model, reinitialize

        if self._model is not None and self._config == config:
            reinitialize(self._model, config, initializers)
            return self._model

        self._model = None
        keras.backend.clear_session()
        gc.collect()
        self._model = build_model(config, initializers, num_classes=num_classes)
        self._config = config
        return self._model
