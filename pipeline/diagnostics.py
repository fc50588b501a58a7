"""Signal propagation at initialization: one fixed batch through a freshly built model.

``measure_signal`` records, for each kernel layer, the std of its output, the share
of dead units and the norm of the loss gradient on its kernel, and gives a verdict on
whether the signal reaches the last hidden layer. ``report_metrics`` and
``report_table`` turn the result into MLflow metrics and a table.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import keras
import numpy as np

from pipeline.errors import UserError

logger = logging.getLogger(__name__)

# Verdict thresholds. They are heuristics, chosen by the reasoning below and checked
# on pipeline's plain_deep and seed_cnn models with random normal input, not fitted
# to training outcomes.
#
# A ReLU network whose kernels keep the variance of its signal (variance 2 / fan_in,
# as he_normal draws them) has a std ratio near 1 between its last hidden and its first kernel layer. he_normal measured
# 1.1 on plain_deep and 2.8 on seed_cnn, whose max pooling raises the std. A factor of
# 10 either way means the scale drifts by a sizeable amount per layer. glorot_uniform
# halves the variance per plain ReLU conv layer and measured 0.02 on plain_deep.
VANISHING_STD_RATIO = 0.1
EXPLODING_STD_RATIO = 10.0

# In a plain ReLU network, scaling every kernel by the same factor leaves the ratio of
# the first to the last gradient norm unchanged. Each kernel's gradient is the product
# of the forward signal at its input and the backward signal at its output, and a
# scale change moves the two in opposite directions. So this ratio mostly reflects
# layer shapes (0.01 to 0.5 on plain_deep and seed_cnn for every initializer tried,
# exploding ones included). It is flagged only when it is extreme, for example with
# saturating activations or very unequal layer scales.
VANISHING_GRADIENT_RATIO = 1e-3
EXPLODING_GRADIENT_RATIO = 1e3

# A last hidden layer with at least 99% of its units at or below 0 for the whole
# batch, or with an output that does not vary at all, passes almost nothing on. For
# ReLU layers a unit that is off for the whole batch also gets no gradient.
DEAD_FRACTION = 0.99

VERDICTS = ("ok", "vanishing", "exploding", "dead")


@dataclass(frozen=True)
class LayerSignal:
    """One kernel layer's output and gradient statistics on the measurement batch."""

    layer: str
    activation_std: float  # std of the layer's output, after its activation, over every element of the batch
    dead_fraction: float  # share of units (channels for conv, units for dense) whose output is <= 0 for every example
    gradient_norm: float  # L2 norm of d(loss)/d(kernel) for sparse categorical cross-entropy, NaN unless on TensorFlow


@dataclass(frozen=True)
class SignalReport:
    """The per-layer signals, the ratios that summarize them, and the verdict.

    Both ratios compare the first kernel layer with the last hidden kernel layer, the
    last kernel layer whose output is not a model output. The softmax output layer is
    left out because its probabilities are bounded whatever the scale of its input.
    A model whose only kernel layer is the output layer uses that layer. A ratio
    whose denominator is 0 is NaN when the numerator is 0 too and infinite otherwise.
    """

    layers: tuple[LayerSignal, ...]  # kernel layers in model order
    std_ratio: float  # activation_std of the last hidden kernel layer / that of the first
    gradient_ratio: float  # gradient_norm of the first kernel layer / that of the last hidden one
    verdict: str  # one of VERDICTS
    seconds: float  # wall time of the measurement, validation excluded
    reference_layer: str = ""  # name of the last hidden kernel layer used in both ratios


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise UserError(f"model must be a keras.Model but got {type(model).__name__}.")

    inputs = getattr(model, "inputs", None)
    outputs = getattr(model, "outputs", None)
    if not inputs or len(inputs) != 1 or not outputs or len(outputs) != 1:
        raise UserError(
            f"measure_signal needs a built functional or Sequential model with one input and "
            f"one output, but model {model.name!r} has inputs {inputs!r} and outputs {outputs!r}."
        )

    if len(outputs[0].shape) != 2:
        raise UserError(
            f"measure_signal needs a model that outputs class probabilities of shape "
            f"(batch, classes), but model {model.name!r} outputs shape {tuple(outputs[0].shape)}."
        )


def _check_batch(model: keras.Model, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=keras.backend.floatx())
    expected = tuple(model.inputs[0].shape[1:])
    compatible = x.ndim == len(expected) + 1 and all(
        want is None or want == got for want, got in zip(expected, x.shape[1:])
    )
    if not compatible or x.shape[0] < 1:
        raise UserError(
            f"x must have shape (examples, {', '.join(str(size) for size in expected)}) for "
            f"model {model.name!r} but got {x.shape}."
        )

    if not np.all(np.isfinite(x)):
        raise UserError("x contains NaN or infinite values; pass a batch of finite inputs.")

    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(
            f"y must be {x.shape[0]} integer class labels, one per example of x, but got "
            f"shape {y.shape} and dtype {y.dtype}."
        )

    classes = int(model.outputs[0].shape[-1])
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise UserError(
            f"y must contain class labels from 0 to {classes - 1} for model {model.name!r}, "
            f"but its labels range from {y.min()} to {y.max()}."
        )

    return x, y


def _resolve_layers(model: keras.Model, kernel_layers: Sequence[str]) -> list[keras.layers.Layer]:
    if isinstance(kernel_layers, str) or not kernel_layers:
        raise UserError(f"kernel_layers must be a non-empty list of layer names but got {kernel_layers!r}.")

    available = [layer.name for layer in model.layers if hasattr(layer, "kernel")]
    missing = [name for name in kernel_layers if name not in available]
    if missing:
        raise UserError(
            f"kernel_layers names {missing}, which model {model.name!r} lacks or which have "
            f"no kernel; its kernel layers are {', '.join(available)}."
        )

    if len(set(kernel_layers)) != len(kernel_layers):
        raise UserError(f"kernel_layers must not repeat a layer but got {list(kernel_layers)!r}.")

    order = {layer.name: index for index, layer in enumerate(model.layers)}
    return [model.get_layer(name) for name in sorted(kernel_layers, key=order.__getitem__)]


def _forward_and_gradients(
    model: keras.Model, layers: list[keras.layers.Layer], x: np.ndarray, y: np.ndarray
) -> tuple[list[np.ndarray], list[float]]:
    """Run the batch in inference mode and return each layer's output and kernel gradient norm."""
    probe = keras.Model(model.inputs[0], [layer.output for layer in layers] + [model.outputs[0]])

    backend = keras.backend.backend()
    if backend in ("jax", "torch"):
        return _forward_and_gradients_stateless(probe, layers, x, y, backend)

    if backend != "tensorflow":
        logger.warning("Gradient norms are not implemented for the Keras backend %s, so they are NaN.", backend)
        outputs = probe(x, training=False)
        return [keras.ops.convert_to_numpy(out) for out in outputs[:-1]], [math.nan] * len(layers)

    import tensorflow as tf

    # Read through the tf.Variable behind each Keras variable and watch it, so that a
    # frozen (non-trainable) kernel gets its gradient too.
    kernels = [layer.kernel.value for layer in layers]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(kernels)
        outputs = probe(x, training=False)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, outputs[-1]))

    gradients = tape.gradient(loss, kernels)
    norms = [0.0 if grad is None else float(tf.norm(grad)) for grad in gradients]
    return [keras.ops.convert_to_numpy(out) for out in outputs[:-1]], norms


def _forward_and_gradients_stateless(
    probe: keras.Model, layers: list[keras.layers.Layer], x: np.ndarray, y: np.ndarray, backend: str
) -> tuple[list[np.ndarray], list[float]]:
    """Differentiate the loss with respect to the kernels on JAX or PyTorch.

    The kernels enter as values in a ``keras.StatelessScope``, so the backend's own
    autodiff treats them as inputs, frozen (non-trainable) kernels included.
    """
    variables = [layer.kernel for layer in layers]

    def run(kernels: list) -> tuple[Any, list]:
        with keras.StatelessScope(state_mapping=list(zip(variables, kernels))):
            outputs = probe(x, training=False)
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, outputs[-1]))
        return loss, outputs[:-1]

    if backend == "jax":
        import jax

        gradients, hidden = jax.grad(run, has_aux=True)([variable.value for variable in variables])
    else:
        # The test extra leaves PyTorch out, so the suite runs this branch only where torch is installed.
        import torch

        kernels = [variable.value.detach().clone().requires_grad_(True) for variable in variables]
        loss, hidden = run(kernels)
        gradients = torch.autograd.grad(loss, kernels)
    norms = [float(np.linalg.norm(keras.ops.convert_to_numpy(gradient))) for gradient in gradients]
    return [keras.ops.convert_to_numpy(out) for out in hidden], norms


def _dead_fraction(output: np.ndarray) -> float:
    per_unit_max = output.reshape(-1, output.shape[-1]).max(axis=0)
    return float(np.mean(per_unit_max <= 0))


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return numerator / denominator


def _reference_index(model: keras.Model, layers: list[keras.layers.Layer]) -> int:
    output_ids = {id(tensor) for tensor in model.outputs}
    hidden = [index for index, layer in enumerate(layers) if id(layer.output) not in output_ids]
    return hidden[-1] if hidden else len(layers) - 1


def _verdict(reference: LayerSignal, std_ratio: float, gradient_ratio: float) -> str:
    if not math.isfinite(reference.activation_std) or std_ratio == math.inf:
        return "exploding"

    if reference.dead_fraction >= DEAD_FRACTION or reference.activation_std == 0.0:
        return "dead"

    if std_ratio < VANISHING_STD_RATIO or gradient_ratio < VANISHING_GRADIENT_RATIO:
        return "vanishing"

    if std_ratio > EXPLODING_STD_RATIO or gradient_ratio > EXPLODING_GRADIENT_RATIO:
        return "exploding"

    return "ok"


def measure_signal(model: keras.Model, x: np.ndarray, y: np.ndarray, kernel_layers: Sequence[str]) -> SignalReport:
    """Run one batch through ``model`` and measure each kernel layer's output and gradient.

    ``model`` must output class probabilities, as ``pipeline.model.build_model``
    builds it, and ``y`` contains integer labels. The model runs in inference mode, so
    dropout is off and batch normalization uses its moving statistics. The model does
    not need to be compiled. Its weights, and any optimizer state, are not changed.
    ``kernel_layers`` are sorted into model order.

    Gradient norms are computed on the TensorFlow backend only. On JAX or PyTorch they
    are NaN, a warning is logged, and the verdict rests on the activations alone.
    """
    _check_model(model)
    x, y = _check_batch(model, x, y)
    layers = _resolve_layers(model, kernel_layers)

    start = time.perf_counter()
    outputs, gradient_norms = _forward_and_gradients(model, layers, x, y)
    signals = tuple(
        LayerSignal(
            layer=layer.name,
            activation_std=float(np.std(output, dtype=np.float64)),
            dead_fraction=_dead_fraction(output),
            gradient_norm=norm,
        )
        for layer, output, norm in zip(layers, outputs, gradient_norms)
    )

    reference = signals[_reference_index(model, layers)]
    std_ratio = _ratio(reference.activation_std, signals[0].activation_std)
    gradient_ratio = _ratio(signals[0].gradient_norm, reference.gradient_norm)
    verdict = _verdict(reference, std_ratio, gradient_ratio)
    seconds = time.perf_counter() - start

    logger.debug(
        "Signal of model %r: std_ratio %.3g, gradient_ratio %.3g, verdict %s, %.2f s.",
        model.name,
        std_ratio,
        gradient_ratio,
        verdict,
        seconds,
    )
    return SignalReport(
        layers=signals,
        std_ratio=std_ratio,
        gradient_ratio=gradient_ratio,
        verdict=verdict,
        seconds=seconds,
        reference_layer=reference.layer,
    )


def report_metrics(report: SignalReport) -> dict[str, float]:
    """Return the report as flat MLflow metrics named ``init.<layer>.<statistic>`` and ``init.<ratio>``.

    The verdict is a string, so it is not among the metrics. Log it as a tag or parameter.
    """
    metrics: dict[str, float] = {}
    for signal in report.layers:
        metrics[f"init.{signal.layer}.activation_std"] = signal.activation_std
        metrics[f"init.{signal.layer}.dead_fraction"] = signal.dead_fraction
        metrics[f"init.{signal.layer}.gradient_norm"] = signal.gradient_norm

    metrics["init.std_ratio"] = report.std_ratio
    metrics["init.gradient_ratio"] = report.gradient_ratio
    metrics["init.seconds"] = report.seconds
    return metrics


def report_table(report: SignalReport) -> dict[str, list]:
    """Return the per-layer signals as columns, one row per kernel layer, for ``MlflowClient.log_table``."""
    return {
        "layer": [signal.layer for signal in report.layers],
        "activation_std": [signal.activation_std for signal in report.layers],
        "dead_fraction": [signal.dead_fraction for signal in report.layers],
        "gradient_norm": [signal.gradient_norm for signal in report.layers],
    }
