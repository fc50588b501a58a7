"""Search spaces: reading ``search_spaces/*.yaml``, checking them, and sampling with Optuna.

A space file is a mapping with these keys, all optional except that every kernel layer
must end up with at least one choice:

- ``default_choices``: initializer labels for every conv2d and dense layer.
- ``layers``: per-layer lists by layer name, which replace the default for that layer.
- ``initializers``: labelled initializers with arguments, ``label: {name: ..., args: {...}}``.
  A label that is not defined here must be a Keras initializer name.
- ``hyperparameters``: other values to search, ``name: {type: float|int|categorical, ...}``,
  or a fixed number that overrides the train config.
- ``provenance``: written by ``pipeline.export`` and ignored here.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from pipeline.config import absolute_path
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

PARAM_SUFFIX = ".kernel_initializer"
SEARCHABLE_HYPERPARAMETERS = ("learning_rate", "momentum", "batch_size")
_TOP_LEVEL_KEYS = ("default_choices", "layers", "initializers", "hyperparameters", "provenance")
_SPACES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "search_spaces")


@dataclass(frozen=True)
class InitializerChoice:
    """A label as Optuna samples it, with the Keras initializer name and arguments behind it."""

    label: str
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def keras_config(self) -> dict:
        return {"class_name": self.name, "config": dict(self.args)}


@dataclass(frozen=True)
class Hyperparameter:
    """A searched value (``type`` float, int or categorical) or a fixed one (``type`` fixed)."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    value: Any = None


@dataclass(frozen=True)
class SearchSpace:
    path: str
    layer_choices: Mapping[str, tuple[str, ...]]
    initializers: Mapping[str, InitializerChoice]
    hyperparameters: tuple[Hyperparameter, ...]
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Sample:
    """One trial's choices: a label per layer and a value per hyperparameter."""

    initializers: Mapping[str, str]
    hyperparameters: Mapping[str, Any]


def param_name(layer: str) -> str:
    return f"{layer}{PARAM_SUFFIX}"


def resolve_space_path(space: str) -> str:
    """Map a name such as ``default`` to ``search_spaces/default.yaml``; keep a path as it is."""
    if space.endswith((".yaml", ".yml", ".json")) or os.sep in space or "/" in space:
        return absolute_path(space)

    local = absolute_path(os.path.join("search_spaces", f"{space}.yaml"))
    if os.path.exists(local):
        return local

    return os.path.join(_SPACES_DIR, f"{space}.yaml")


def _read_yaml_mapping(path: str) -> dict:
    if not os.path.isfile(path):
        available = sorted(name[:-5] for name in os.listdir(_SPACES_DIR) if name.endswith(".yaml"))
        raise UserError(
            f"Search space file {path} not found; set space= to one of {', '.join(available)} "
            f"or to the path of a search-space YAML file."
        )

    try:
        with open(path, encoding="utf-8") as stream:
            content = yaml.safe_load(stream)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"Search space file {path} could not be read as YAML: {error}") from error

    if content is None:
        raise UserError(f"Search space file {path} is empty; give it default_choices or a list per layer under layers.")

    if not isinstance(content, dict):
        raise UserError(
            f"Search space file {path} must contain a mapping with keys such as "
            f"default_choices and layers, but it contains {type(content).__name__}."
        )

    unknown = sorted(set(content) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise UserError(
            f"Search space file {path} has unknown keys {unknown}; the accepted keys are "
            f"{', '.join(_TOP_LEVEL_KEYS)}."
        )

    return content


def _check_label_list(path: str, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(
            f"{where} in {path} must be a non-empty list of initializer labels but got {value!r}."
        )

    for label in value:
        if not isinstance(label, str):
            raise UserError(f"{where} in {path} must contain initializer labels (strings) but got {label!r}.")

    if len(set(value)) != len(value):
        raise UserError(f"{where} in {path} lists a label twice: {value!r}.")

    return tuple(value)


def _check_initializer(path: str, label: str, name: str, args: Mapping[str, Any]) -> InitializerChoice:
    import keras

    from pipeline import initializers

    try:
        instance = initializers.get({"class_name": name, "config": dict(args)})
    except (ValueError, TypeError) as error:
        raise UserError(
            f"Initializer {label!r} in {path} is not valid: Keras could not create {name!r} "
            f"with arguments {dict(args)!r} ({error}). Use a name from keras.initializers, "
            f"such as he_normal or orthogonal, or delta_orthogonal or lsuv, with arguments "
            f"that its constructor accepts."
        ) from error

    if not isinstance(instance, keras.initializers.Initializer):
        raise UserError(f"Initializer {label!r} in {path} resolves to {instance!r}, which is not a Keras initializer.")

    return InitializerChoice(label=label, name=name, args=dict(args))


def _parse_labelled(path: str, content: Any) -> dict[str, InitializerChoice]:
    if content is None:
        return {}

    if not isinstance(content, dict):
        raise UserError(f"initializers in {path} must be a mapping of label to {{name, args}} but got {content!r}.")

    parsed = {}
    for label, entry in content.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(
                f"Initializer label {label!r} in {path} must be a mapping with a Keras "
                f"initializer `name` and optional `args`, but got {entry!r}."
            )

        args = entry.get("args") or {}
        unknown = sorted(set(entry) - {"name", "args"})
        if unknown or not isinstance(args, dict):
            raise UserError(
                f"Initializer label {label!r} in {path} accepts only `name` and `args` "
                f"(a mapping), but got {entry!r}."
            )
        parsed[str(label)] = _check_initializer(path, str(label), entry["name"], args)
    return parsed


def _check_hyperparameter_value(path: str, name: str, value: Any) -> None:
    """Apply the train config's own range to a fixed value or a search bound."""
    valid = {
        "learning_rate": isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
        "momentum": isinstance(value, (int, float)) and 0 <= value < 1,
        "batch_size": isinstance(value, int) and value > 0,
    }[name]
    if not valid:
        expected = {"learning_rate": "a positive number", "momentum": "a number in [0, 1)", "batch_size": "a positive integer"}[name]
        raise UserError(f"Hyperparameter {name!r} in {path} must be {expected} but got {value!r}.")


def _parse_hyperparameter(path: str, name: str, entry: Any) -> Hyperparameter:
    if name not in SEARCHABLE_HYPERPARAMETERS:
        raise UserError(
            f"Hyperparameter {name!r} in {path} is not supported; the supported ones are "
            f"{', '.join(SEARCHABLE_HYPERPARAMETERS)}."
        )

    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        _check_hyperparameter_value(path, name, entry)
        return Hyperparameter(name=name, type="fixed", value=entry)

    if not isinstance(entry, dict):
        raise UserError(f"Hyperparameter {name!r} in {path} must be a number or a mapping with `type` but got {entry!r}.")

    kind = entry.get("type")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"Hyperparameter {name!r} in {path} needs a non-empty `choices` list but got {choices!r}.")
        for choice in choices:
            _check_hyperparameter_value(path, name, choice)
        return Hyperparameter(name=name, type=kind, choices=tuple(choices))

    if kind not in ("float", "int"):
        raise UserError(
            f"Hyperparameter {name!r} in {path} has type {kind!r}; use float, int or categorical, "
            f"or give a fixed number."
        )

    low, high, log = entry.get("low"), entry.get("high"), bool(entry.get("log", False))
    numbers_ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers_ok or low >= high or (log and low <= 0):
        raise UserError(
            f"Hyperparameter {name!r} in {path} needs numbers low < high (and low > 0 when "
            f"log is true) but got low={low!r}, high={high!r}, log={log}."
        )

    _check_hyperparameter_value(path, name, low)
    _check_hyperparameter_value(path, name, high)

    return Hyperparameter(name=name, type=kind, low=low, high=high, log=log)


def load_space(space: str, kernel_layers: Sequence[str]) -> SearchSpace:
    """Read a space file and check every label and layer name against Keras and the model.

    ``kernel_layers`` lists the model's layers that have a kernel, in order.
    """
    path = resolve_space_path(space)
    content = _read_yaml_mapping(path)
    labelled = _parse_labelled(path, content.get("initializers"))

    default = content.get("default_choices")
    default_choices = None if default is None else _check_label_list(path, "default_choices", default)

    overrides = content.get("layers") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"layers in {path} must be a mapping of layer name to a list of labels but got {overrides!r}.")

    unknown_layers = sorted(set(overrides) - set(kernel_layers))
    if unknown_layers:
        raise UserError(
            f"Search space {path} names layers {unknown_layers} that the model lacks or that "
            f"have no kernel; the model's kernel layers are {', '.join(kernel_layers)}."
        )

    layer_choices: dict[str, tuple[str, ...]] = {}
    for layer in kernel_layers:
        if layer in overrides:
            layer_choices[layer] = _check_label_list(path, f"layers.{layer}", overrides[layer])
        elif default_choices is not None:
            layer_choices[layer] = default_choices
        else:
            raise UserError(
                f"Layer {layer!r} has no initializer choices in {path}; add default_choices "
                f"or a list under layers.{layer}."
            )

    initializers = dict(labelled)
    for label in sorted({label for labels in layer_choices.values() for label in labels}):
        if label not in initializers:
            initializers[label] = _check_initializer(path, label, label, {})

    hyperparameters = content.get("hyperparameters") or {}
    if not isinstance(hyperparameters, dict):
        raise UserError(f"hyperparameters in {path} must be a mapping but got {hyperparameters!r}.")

    parsed = tuple(_parse_hyperparameter(path, str(name), entry) for name, entry in hyperparameters.items())
    return SearchSpace(
        path=path,
        layer_choices=layer_choices,
        initializers=initializers,
        hyperparameters=parsed,
        raw=content,
    )


def check_kernel_shapes(space: SearchSpace, kernel_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Create every choice once on its layer's kernel shape, so a misfit fails before training.

    Some initializers accept only some shapes; Keras' ``identity``, for example, needs a 2D kernel.
    """
    from pipeline import initializers

    for layer, labels in space.layer_choices.items():
        for label in labels:
            choice = space.initializers[label]
            try:
                initializers.get(choice.keras_config())(kernel_shapes[layer])
            except (ValueError, TypeError) as error:
                raise UserError(
                    f"Initializer {label!r} cannot initialize layer {layer!r} with kernel shape "
                    f"{tuple(kernel_shapes[layer])}: {error}. Remove it from that layer's choices "
                    f"in {space.path}."
                ) from error


def suggest(trial: Any, space: SearchSpace) -> Sample:
    """Draw one sample from ``space`` through an Optuna trial."""
    initializers = {
        layer: trial.suggest_categorical(param_name(layer), list(labels))
        for layer, labels in space.layer_choices.items()
    }

    values: dict[str, Any] = {}
    for hp in space.hyperparameters:
        if hp.type == "fixed":
            values[hp.name] = hp.value
        elif hp.type == "categorical":
            values[hp.name] = trial.suggest_categorical(hp.name, list(hp.choices))
        elif hp.type == "int":
            values[hp.name] = trial.suggest_int(hp.name, int(hp.low), int(hp.high), log=hp.log)
        else:
            values[hp.name] = trial.suggest_float(hp.name, float(hp.low), float(hp.high), log=hp.log)
    return Sample(initializers=initializers, hyperparameters=values)


def grid(space: SearchSpace) -> dict[str, list]:
    """Return the Optuna grid-sampler space, rejecting continuous hyperparameters."""
    result: dict[str, list] = {param_name(layer): list(labels) for layer, labels in space.layer_choices.items()}
    for hp in space.hyperparameters:
        if hp.type in ("float", "int"):
            raise UserError(
                f"study.sampler=grid cannot search the continuous hyperparameter {hp.name!r} of "
                f"{space.path}; use study.sampler=tpe or random, or give {hp.name} categorical choices."
            )
        if hp.type == "categorical":
            result[hp.name] = list(hp.choices)
    return result


def sample_from_params(space: SearchSpace, params: Mapping[str, Any]) -> Sample:
    """Rebuild a trial's sample from its Optuna params, for export."""
    initializers = {layer: params[param_name(layer)] for layer in space.layer_choices}
    values = {
        hp.name: hp.value if hp.type == "fixed" else params[hp.name]
        for hp in space.hyperparameters
    }
    return Sample(initializers=initializers, hyperparameters=values)


def space_document(space: SearchSpace, sample: Sample, provenance: Mapping[str, Any]) -> dict:
    """Return a space file that fixes every choice to ``sample``, so search accepts it back."""
    used = sorted(set(sample.initializers.values()))
    labelled = {
        label: {"name": space.initializers[label].name, "args": dict(space.initializers[label].args)}
        for label in used
        if space.initializers[label].args or space.initializers[label].name != label
    }

    document: dict[str, Any] = {"provenance": dict(provenance)}
    if labelled:
        document["initializers"] = labelled
    document["layers"] = {layer: [label] for layer, label in sample.initializers.items()}
    if sample.hyperparameters:
        document["hyperparameters"] = dict(sample.hyperparameters)
    return document
