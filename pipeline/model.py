"""The functional-API model builder: layer configs plus a layer-to-initializer mapping.

This module does not use Optuna or MLflow. An initializer is given as a Keras
config, ``{"class_name": ..., "config": {...}}``, under the name of its layer.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import keras

from pipeline import initializers as custom_initializers
from pipeline.config import KERNEL_LAYER_TYPES, LayerConfig, ModelConfig
from pipeline.errors import UserError

logger = logging.getLogger(__name__)


def kernel_layers(model: ModelConfig) -> list[str]:
    """Return the names of the layers that have a kernel, in model order."""
    return [layer.name for layer in model.layers if layer.type in KERNEL_LAYER_TYPES]


def _make_layer(spec: LayerConfig, initializer: Any) -> keras.layers.Layer:
    if spec.type == "conv2d":
        return keras.layers.Conv2D(
            filters=spec.filters,
            kernel_size=spec.kernel_size,
            strides=spec.strides,
            padding=spec.padding,
            activation=spec.activation,
            kernel_initializer=initializer,
            name=spec.name,
        )
    if spec.type == "dense":
        return keras.layers.Dense(
            units=spec.units,
            activation=spec.activation,
            kernel_initializer=initializer,
            name=spec.name,
        )
    if spec.type == "max_pool":
        return keras.layers.MaxPooling2D(pool_size=spec.pool_size, name=spec.name)
    if spec.type == "average_pool":
        return keras.layers.AveragePooling2D(pool_size=spec.pool_size, name=spec.name)
    if spec.type == "global_average_pool":
        return keras.layers.GlobalAveragePooling2D(name=spec.name)
    if spec.type == "flatten":
        return keras.layers.Flatten(name=spec.name)
    if spec.type == "dropout":
        return keras.layers.Dropout(rate=spec.rate, name=spec.name)

    raise UserError(f"Layer {spec.name!r} has unknown type {spec.type!r}.")


def build_model(
    model: ModelConfig,
    initializers: Mapping[str, Mapping[str, Any]] | None = None,
    num_classes: int | None = None,
) -> keras.Model:
    """Build the model, giving each kernel layer the initializer mapped to its name.

    A kernel layer missing from ``initializers`` keeps Keras' default, glorot_uniform.
    With ``num_classes`` set, the output must be one probability per class.
    """
    initializers = dict(initializers or {})
    unknown = sorted(set(initializers) - set(kernel_layers(model)))
    if unknown:
        raise UserError(
            f"Initializers were given for layers {unknown}, which model {model.name!r} lacks "
            f"or which have no kernel; its kernel layers are {', '.join(kernel_layers(model))}."
        )

    inputs = keras.Input(shape=tuple(model.input_shape), name="image")
    outputs = inputs
    for spec in model.layers:
        initializer = "glorot_uniform"
        if spec.name in initializers:
            initializer = custom_initializers.get(dict(initializers[spec.name]))
        try:
            outputs = _make_layer(spec, initializer)(outputs)
        except ValueError as error:
            raise UserError(
                f"Layer {spec.name!r} of model {model.name!r} does not fit its input of shape "
                f"{tuple(outputs.shape)}: {error}"
            ) from error

    if len(outputs.shape) != 2:
        raise UserError(
            f"Model {model.name!r} ends with shape {tuple(outputs.shape)}, but it must end with "
            f"(batch, classes); add a flatten or global_average_pool layer before the dense layers."
        )

    if num_classes is not None and outputs.shape[-1] != num_classes:
        raise UserError(
            f"Model {model.name!r} has {outputs.shape[-1]} output units but the data has "
            f"{num_classes} classes; set the last layer's units to {num_classes}."
        )

    return keras.Model(inputs=inputs, outputs=outputs, name=model.name)


def check_input_shape(model: ModelConfig, image_shape: tuple[int, ...], source: str) -> None:
    """Raise ``UserError`` unless the images from ``source`` have the model's input shape."""
    image_shape = tuple(image_shape)
    if image_shape != tuple(model.input_shape):
        raise UserError(
            f"model.input_shape is {list(model.input_shape)} but the images of {source} have "
            f"shape {list(image_shape)}; set model.input_shape={list(image_shape)}."
        )


def kernel_shapes(model: ModelConfig, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """Build the model once with default initializers and return each kernel's shape."""
    built = build_model(model, num_classes=num_classes)
    shapes = {name: tuple(built.get_layer(name).kernel.shape) for name in kernel_layers(model)}
    del built
    keras.backend.clear_session()
    return shapes


def reinitialize(model: keras.Model, config: ModelConfig, initializers: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Give a built model fresh weights, as ``build_model`` would, without building it again.

    Each kernel layer gets the initializer mapped to its name, or glorot_uniform when
    none is mapped. The initializer is stored on the layer and draws the new kernel.
    Biases are drawn from their own initializers. Keeping the model lets a process reuse its traced
    train step across trials, because TensorFlow keeps memory for every traced function.
    """
    initializers = dict(initializers or {})
    for name in kernel_layers(config):
        layer = model.get_layer(name)
        layer.kernel_initializer = custom_initializers.get(dict(initializers.get(name, {"class_name": "glorot_uniform", "config": {}})))
        layer.kernel.assign(layer.kernel_initializer(tuple(layer.kernel.shape), dtype=layer.kernel.dtype))
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(layer.bias_initializer(tuple(layer.bias.shape), dtype=layer.bias.dtype))
