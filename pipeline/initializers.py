"""Kernel initializers that Keras 3 lacks: delta-orthogonal and data-dependent LSUV.

``DeltaOrthogonal`` follows Xiao et al. 2018, "Dynamical Isometry and a Mean Field
Theory of CNNs" (arXiv:1806.05393). ``LSUV`` and ``apply_lsuv`` follow Mishkin & Matas
2016, "All you need is a good init" (arXiv:1511.06422). Search spaces name them ``delta_orthogonal`` and ``lsuv``, and
``get`` resolves those names before it falls back to ``keras.initializers.get``.

Both classes are registered as ``pipeline>DeltaOrthogonal`` and ``pipeline>LSUV``, so
a model that uses them saves to ``.keras`` and loads back once this module is imported.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import keras
import numpy as np

from pipeline.errors import UserError

logger = logging.getLogger(__name__)

# Activations whose output is bounded, so a unit std after the activation is out of
# reach (softmax, sigmoid) or reached only by saturating (tanh). For these, apply_lsuv
# measures the layer's output before the activation.
_BOUNDED_ACTIVATIONS = frozenset(
    {"softmax", "sigmoid", "hard_sigmoid", "tanh", "hard_tanh", "softsign", "relu6"}
)


def _check_gain(gain: Any) -> float:
    if isinstance(gain, bool) or not isinstance(gain, (int, float, np.integer, np.floating)):
        raise TypeError(f"gain must be a number but got {gain!r} of type {type(gain).__name__}.")

    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be a positive finite number but got {gain!r}.")

    return float(gain)


@keras.saving.register_keras_serializable(package="pipeline")
class DeltaOrthogonal(keras.initializers.Orthogonal):
    """Delta-orthogonal initializer for convolution kernels.

    A kernel of shape ``(*spatial, c_in, c_out)`` is zero except at one tap, which is
    an orthogonal ``c_in x c_out`` matrix times ``gain``. The matrix has orthonormal
    columns when ``c_in >= c_out`` and orthonormal rows otherwise. With odd kernel
    sizes the tap is the spatial centre, so a stride-1 convolution with ``same``
    padding maps each pixel's channel vector through that matrix, and with
    ``c_in == c_out`` and gain 1 it preserves the norm of its input.

    Even kernel sizes have no centre. The tap is then ``(k - 1) // 2`` along each
    spatial axis, the tap that ``same`` padding aligns with the output pixel (Keras
    puts the extra padding row after the input), so the same property holds.

    A 2D (dense) shape gets a plain orthogonal matrix times ``gain``, as
    ``keras.initializers.Orthogonal`` gives. Shapes of rank 0 or 1 raise ValueError.

    ``seed`` works as in Keras' random initializers: an integer gives the same kernel
    on every call, and None draws a seed from Python's ``random`` at construction, so
    ``keras.utils.set_random_seed`` makes it reproducible.
    """

    def __init__(self, gain: float = 1.0, seed: Any = None) -> None:
        super().__init__(gain=_check_gain(gain), seed=seed)

    def __call__(self, shape: Any, dtype: Any = None) -> Any:
        shape = tuple(int(size) for size in shape)
        if len(shape) < 2:
            raise ValueError(
                f"DeltaOrthogonal needs a kernel shape of rank 2 (dense) or more "
                f"(convolution: spatial sizes, c_in, c_out) but got shape {shape} of rank {len(shape)}."
            )

        centre = super().__call__(shape[-2:], dtype=dtype)
        if len(shape) == 2:
            return centre

        spatial = shape[:-2]
        taps = [(size - 1) // 2 for size in spatial]
        padding = [(tap, size - 1 - tap) for tap, size in zip(taps, spatial)] + [(0, 0), (0, 0)]
        centre = keras.ops.reshape(centre, (1,) * len(spatial) + shape[-2:])
        return keras.ops.pad(centre, padding)


@keras.saving.register_keras_serializable(package="pipeline")
class LSUV(keras.initializers.Orthogonal):
    """Orthogonal pre-initialization that marks a layer for ``apply_lsuv``.

    By itself this initializer is ``keras.initializers.Orthogonal(gain, seed)``.
    ``apply_lsuv`` rescales only the layers whose kernel initializer is an LSUV
    instance. Without that call, the layer keeps the orthogonal kernel.
    """

    def __init__(self, gain: float = 1.0, seed: Any = None) -> None:
        super().__init__(gain=_check_gain(gain), seed=seed)


CUSTOM_INITIALIZERS: dict[str, type[keras.initializers.Initializer]] = {
    "delta_orthogonal": DeltaOrthogonal,
    "lsuv": LSUV,
}

# Search spaces use the snake-case names, and saved Keras configs use the class names.
_CUSTOM_BY_NAME = {
    **CUSTOM_INITIALIZERS,
    **{cls.__name__: cls for cls in CUSTOM_INITIALIZERS.values()},
    **{f"pipeline>{cls.__name__}": cls for cls in CUSTOM_INITIALIZERS.values()},
}


def _split_identifier(identifier: Any) -> tuple[str, dict]:
    if isinstance(identifier, str):
        return identifier, {}

    if not isinstance(identifier, Mapping):
        raise TypeError(
            f"An initializer must be a name such as 'he_normal' or a mapping "
            f"{{'class_name': ..., 'config': {{...}}}} but got {identifier!r} of type "
            f"{type(identifier).__name__}."
        )

    name = identifier.get("class_name")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"An initializer mapping must have a 'class_name' string, such as 'he_normal', "
            f"but got {identifier!r}."
        )

    args = identifier.get("config")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise TypeError(
            f"The 'config' of initializer {name!r} must be a mapping of constructor "
            f"arguments but got {args!r}."
        )

    return name, dict(args)


def get(identifier: Mapping[str, Any] | str | keras.initializers.Initializer) -> keras.initializers.Initializer:
    """Create an initializer from a name or a ``{"class_name": ..., "config": {...}}`` mapping.

    ``delta_orthogonal`` and ``lsuv`` (or their class names) resolve to this module's
    classes, and any other name goes to ``keras.initializers.get``. An Initializer
    instance is returned unchanged. An unknown name raises ValueError, and arguments
    that the constructor rejects raise TypeError or ValueError, the types that Keras
    raises, so ``pipeline.space`` can report them as a user error.
    """
    if isinstance(identifier, keras.initializers.Initializer):
        return identifier

    name, args = _split_identifier(identifier)
    custom = _CUSTOM_BY_NAME.get(name)
    if custom is not None:
        try:
            return custom(**args)
        except TypeError as error:
            raise TypeError(
                f"Initializer {name!r} accepts the arguments gain and seed but got {args!r} ({error})."
            ) from error

    try:
        instance = keras.initializers.get({"class_name": name, "config": args})
    except ValueError as error:
        raise ValueError(
            f"Unknown initializer {name!r}. Use a name from keras.initializers, such as "
            f"he_normal or orthogonal, or one of {', '.join(CUSTOM_INITIALIZERS)}."
        ) from error
    except TypeError as error:
        raise TypeError(
            f"Keras initializer {name!r} does not accept the arguments {args!r}. Pass only "
            f"arguments that the constructor of keras.initializers.{name} accepts."
        ) from error

    if not isinstance(instance, keras.initializers.Initializer):
        raise TypeError(f"Initializer {name!r} resolves to {instance!r}, which is not a Keras initializer.")

    return instance


def _nested_models(model: keras.Model) -> list[keras.Model]:
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def _uses_lsuv(layer: keras.layers.Layer) -> bool:
    return isinstance(getattr(layer, "kernel_initializer", None), LSUV)


def needs_data(model: keras.Model) -> bool:
    """Return whether any layer, nested models included, uses LSUV and so needs ``apply_lsuv``."""
    if any(_uses_lsuv(layer) for layer in model.layers):
        return True

    return any(needs_data(nested) for nested in _nested_models(model))


def _check_lsuv_arguments(target_std: float, tolerance: float, max_iterations: int) -> None:
    for key, value in (("target_std", target_std), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UserError(f"{key} must be a positive finite number but got {value!r}.")

    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise UserError(f"max_iterations must be an integer of at least 1 but got {max_iterations!r}.")


def _check_lsuv_model(model: keras.Model, batch: np.ndarray) -> None:
    if not isinstance(model, keras.Model):
        raise UserError(f"model must be a keras.Model but got {type(model).__name__}.")

    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise UserError(
            f"apply_lsuv needs a built functional or Sequential model with one input, but model "
            f"{model.name!r} has inputs {inputs!r}; build it on a keras.Input."
        )

    for nested in _nested_models(model):
        if needs_data(nested):
            raise UserError(
                f"Nested model {nested.name!r} inside {model.name!r} uses LSUV, but apply_lsuv "
                f"rescales only the outer model's own layers; use LSUV in the outer model's layers."
            )

    expected = tuple(inputs[0].shape[1:])
    received = tuple(batch.shape[1:])
    compatible = len(expected) == len(received) and all(
        want is None or want == got for want, got in zip(expected, received)
    )
    if batch.ndim < 1 or batch.shape[0] < 1 or not compatible:
        raise UserError(
            f"batch must have shape (examples, {', '.join(str(size) for size in expected)}) "
            f"for model {model.name!r} but got {batch.shape}."
        )

    if not np.all(np.isfinite(batch)):
        raise UserError("batch contains NaN or infinite values; pass a batch of finite inputs.")


def _layer_input(model: keras.Model, layer: keras.layers.Layer, batch: np.ndarray) -> Any:
    try:
        layer_input = layer.input
    except (AttributeError, ValueError) as error:
        raise UserError(
            f"Layer {layer.name!r} of model {model.name!r} has no single input tensor ({error}); "
            f"apply_lsuv supports layers that are called once in a functional or Sequential model."
        ) from error

    prefix = keras.Model(model.inputs[0], layer_input)
    return prefix(batch, training=False)


def _activation_name(layer: keras.layers.Layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "")


def _measured_std(layer: keras.layers.Layer, layer_input: Any) -> float:
    """Return the std of the layer's output, measured before a bounded activation."""
    if _activation_name(layer) not in _BOUNDED_ACTIVATIONS:
        output = layer(layer_input, training=False)
    else:
        activation = layer.activation
        layer.activation = keras.activations.linear
        try:
            output = layer(layer_input, training=False)
        finally:
            layer.activation = activation

    return float(np.std(keras.ops.convert_to_numpy(output), dtype=np.float64))


def _rescale_layer(layer: keras.layers.Layer, layer_input: Any, target_std: float, tolerance: float, max_iterations: int) -> float:
    std = _measured_std(layer, layer_input)
    iterations = 0
    while abs(std - target_std) > tolerance and iterations < max_iterations:
        if std == 0.0 or not math.isfinite(std):
            logger.warning(
                "LSUV cannot rescale layer %r because its output std is %s; its kernel is left as it is.",
                layer.name,
                std,
            )
            break

        layer.kernel.assign(keras.ops.multiply(layer.kernel, target_std / std))
        iterations += 1
        std = _measured_std(layer, layer_input)

    if abs(std - target_std) > tolerance:
        logger.warning(
            "LSUV left layer %r at output std %.4g after %d rescaling steps, outside %g +- %g.",
            layer.name,
            std,
            iterations,
            target_std,
            tolerance,
        )
    else:
        logger.debug("LSUV set layer %r to output std %.4g in %d steps.", layer.name, std, iterations)

    return std


def apply_lsuv(
    model: keras.Model,
    batch: np.ndarray,
    target_std: float = 1.0,
    tolerance: float = 0.1,
    max_iterations: int = 10,
) -> dict[str, float]:
    """Rescale the kernel of every LSUV layer so that its output std on ``batch`` is ``target_std``.

    The layers are processed in model order, so each layer receives the inputs that
    the already rescaled layers before it produce. A layer's output is its output tensor
    after its activation, computed in inference mode (dropout off). The exception is a
    layer with a bounded activation (softmax, sigmoid, hard_sigmoid, tanh, hard_tanh,
    softsign, relu6), where a std of 1 is out of reach or needs saturation. For those
    the output before the activation is measured, the logits for a softmax layer.

    Each step multiplies the kernel by ``target_std / std`` until the std is within
    ``tolerance`` of ``target_std`` or ``max_iterations`` steps are done. Mishkin &
    Matas state the tolerance on the variance, and this function states it on the std.
    The bias is not changed. With ReLU or no activation and a zero bias, one step is exact. A layer
    that ends outside the tolerance, or whose output std is 0, is logged as a warning.
    Layers that do not use LSUV are not changed.

    Returns each LSUV layer's final output std, by layer name.
    """
    _check_lsuv_arguments(target_std, tolerance, max_iterations)
    batch = np.asarray(batch, dtype=keras.backend.floatx())
    _check_lsuv_model(model, batch)

    stds: dict[str, float] = {}
    for layer in model.layers:
        if not _uses_lsuv(layer):
            continue

        layer_input = _layer_input(model, layer, batch)
        stds[layer.name] = _rescale_layer(layer, layer_input, target_std, tolerance, max_iterations)

    if not stds:
        logger.info("Model %r has no LSUV layer, so apply_lsuv changed nothing.", model.name)
    return stds
