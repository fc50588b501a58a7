"""Typed config schemas, registered in Hydra's ConfigStore, and their validation.

The YAML files under ``conf/`` extend these schemas, so OmegaConf rejects a value of
the wrong type while composing. ``validate`` then checks ranges and choices that a type
cannot express, before anything is created on disk.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from pipeline.errors import UserError

DATA_FORMATS = ("auto", "keras", "batches", "folders")
LAYER_TYPES = ("conv2d", "dense", "max_pool", "average_pool", "global_average_pool", "flatten", "dropout")
KERNEL_LAYER_TYPES = ("conv2d", "dense")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")
EXPORT_FORMATS = ("yaml", "json")
PRUNABLE_VERDICTS = ("vanishing", "exploding", "dead")


@dataclass
class DataConfig:
    """The CIFAR-10 source and its split.

    ``path`` null means Keras' own download. Subset sizes count images and are drawn
    per class, so every subset stays stratified.
    """

    path: Optional[str] = None
    format: str = "auto"
    cache_dir: Optional[str] = ".cache/pipeline"
    validation_fraction: float = 0.1
    split_seed: int = 0
    train_subset: Optional[int] = None
    val_subset: Optional[int] = None
    test_subset: Optional[int] = None


@dataclass
class LayerConfig:
    """One layer of a model, named so that a search space can address it."""

    name: str = MISSING
    type: str = MISSING
    filters: Optional[int] = None
    kernel_size: Optional[int] = None
    strides: int = 1
    padding: str = "same"
    units: Optional[int] = None
    activation: Optional[str] = None
    pool_size: Optional[int] = None
    rate: Optional[float] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    input_shape: List[int] = field(default_factory=lambda: [32, 32, 3])
    layers: List[LayerConfig] = MISSING


@dataclass
class TrainConfig:
    """Optimizer and loop settings. The trial seed is ``seed`` plus the trial number."""

    optimizer: str = "adam"
    learning_rate: float = 1.0e-3
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 3
    seed: int = 0
    shuffle_buffer: int = 50000
    jit_compile: bool = False
    steps_per_execution: int = 1
    deterministic: bool = False
    progress: bool = True


@dataclass
class StudyConfig:
    """Optuna study settings. ``n_trials`` is a total for the study across reruns."""

    name: str = MISSING
    storage: str = "sqlite:///mlruns/optuna.db"
    sampler: str = "tpe"
    pruner: str = "percentile"
    seed: int = 0
    n_trials: Optional[int] = 20
    timeout: Optional[float] = None
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    percentile: float = 25.0
    tpe_startup_trials: int = 10
    min_resource: int = 1
    reduction_factor: int = 3
    heartbeat_interval: int = 30
    grace_period: int = 90
    retry_lost_trials: bool = False


@dataclass
class TrackingConfig:
    """MLflow store. ``experiment`` null means one experiment named after the study."""

    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: Optional[str] = "mlruns/artifacts"
    experiment: Optional[str] = None


@dataclass
class ExportConfig:
    """The output file of ``pipeline.export``; a null path means ``exports/<study>-best.<format>``."""

    path: Optional[str] = None
    format: str = "yaml"


@dataclass
class DiagnosticsConfig:
    """Signal-propagation checks on one fixed batch before a trial's first epoch."""

    enabled: bool = True
    batch_size: int = 256
    prune_verdicts: List[str] = field(default_factory=list)


@dataclass
class ConfirmConfig:
    """``pipeline.confirm``: retrain a candidate and a baseline on the same seeds.

    ``candidate`` and ``baseline`` are search-space files that fix every layer, such as
    an export; ``baseline`` null means Keras' default, glorot_uniform everywhere.
    """

    candidate: Optional[str] = None
    baseline: Optional[str] = None
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    confidence: float = 0.95


@dataclass
class SearchConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    train: TrainConfig = MISSING
    study: StudyConfig = MISSING
    tracking: TrackingConfig = MISSING
    export: ExportConfig = field(default_factory=ExportConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    space: str = "default"


def register_configs() -> None:
    """Store the schemas so that ``conf/`` files can extend them by name."""
    store = ConfigStore.instance()
    store.store(name="base_search", node=SearchConfig)
    store.store(group="data", name="base_data", node=DataConfig)
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(group="train", name="base_train", node=TrainConfig)
    store.store(group="study", name="base_study", node=StudyConfig)
    store.store(group="tracking", name="base_tracking", node=TrackingConfig)


def to_object(cfg: DictConfig) -> SearchConfig:
    """Turn a composed config into dataclasses, reporting a missing value as a user error."""
    try:
        return OmegaConf.to_object(cfg)
    except InterpolationResolutionError as error:
        raise UserError(
            f"A config value could not be resolved: {error}. With +cluster=postgres, set "
            f"PIPELINE_OPTUNA_STORAGE and PIPELINE_TRACKING_URI in the environment."
        ) from error
    except Exception as error:  # OmegaConf raises several types for one cause.
        raise UserError(f"The config is incomplete or invalid: {error}") from error


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key} must be one of {', '.join(choices)} but got {value!r}.")


def _check_positive(key: str, value: Optional[float], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return

    if value is None or not math.isfinite(value) or value <= 0:
        raise UserError(f"{key} must be a positive number but got {value!r}.")


def _validate_data(data: DataConfig) -> None:
    _check_choice("data.format", data.format, DATA_FORMATS)
    if not 0.0 < data.validation_fraction < 1.0:
        raise UserError(
            f"data.validation_fraction must be between 0 and 1 (exclusive) but got "
            f"{data.validation_fraction!r}; 0.1 keeps 5,000 of CIFAR-10's 50,000 training images."
        )

    for key in ("train_subset", "val_subset", "test_subset"):
        _check_positive(f"data.{key}", getattr(data, key), allow_none=True)


def _validate_layer(index: int, layer: LayerConfig) -> None:
    where = f"model.layers[{index}] ({layer.name!r})"
    _check_choice(f"{where}.type", layer.type, LAYER_TYPES)
    if layer.type == "conv2d":
        _check_positive(f"{where}.filters", layer.filters)
        _check_positive(f"{where}.kernel_size", layer.kernel_size)
        _check_positive(f"{where}.strides", layer.strides)
        _check_choice(f"{where}.padding", layer.padding, ("same", "valid"))
    if layer.type == "dense":
        _check_positive(f"{where}.units", layer.units)
    if layer.type in ("max_pool", "average_pool"):
        _check_positive(f"{where}.pool_size", layer.pool_size)
    if layer.type == "dropout" and (layer.rate is None or not 0.0 <= layer.rate < 1.0):
        raise UserError(f"{where}.rate must be in [0, 1) but got {layer.rate!r}.")


def _validate_model(model: ModelConfig) -> None:
    if len(model.input_shape) != 3 or any(size <= 0 for size in model.input_shape):
        raise UserError(
            f"model.input_shape must be three positive sizes (height, width, channels) "
            f"but got {list(model.input_shape)!r}."
        )

    if not model.layers:
        raise UserError(f"model.layers of model {model.name!r} is empty; list at least one layer.")

    seen: set[str] = set()
    for index, layer in enumerate(model.layers):
        if layer.name in seen:
            raise UserError(f"model.layers has two layers named {layer.name!r}; layer names must be unique.")
        seen.add(layer.name)
        _validate_layer(index, layer)

    last = model.layers[-1]
    if last.type != "dense" or last.activation != "softmax":
        raise UserError(
            f"The last layer of model {model.name!r} must be a dense layer with softmax "
            f"activation, one unit per class, but got {last.name!r} of type {last.type!r} "
            f"with activation {last.activation!r}."
        )


def _validate_train(train: TrainConfig) -> None:
    _check_choice("train.optimizer", train.optimizer, OPTIMIZERS)
    _check_positive("train.learning_rate", train.learning_rate)
    _check_positive("train.batch_size", train.batch_size)
    _check_positive("train.epochs", train.epochs)
    _check_positive("train.shuffle_buffer", train.shuffle_buffer)
    if not 0.0 <= train.momentum < 1.0:
        raise UserError(f"train.momentum must be in [0, 1) but got {train.momentum!r}.")
    if train.steps_per_execution < 1:
        raise UserError(f"train.steps_per_execution must be 1 or more but got {train.steps_per_execution!r}.")


def _validate_study(study: StudyConfig) -> None:
    if not study.name or not study.name.strip():
        raise UserError("study.name is empty; set study.name=<name> to choose the study.")

    _check_choice("study.sampler", study.sampler, SAMPLERS)
    _check_choice("study.pruner", study.pruner, PRUNERS)
    _check_positive("study.n_trials", study.n_trials, allow_none=True)
    _check_positive("study.timeout", study.timeout, allow_none=True)
    if study.n_trials is None and study.timeout is None:
        raise UserError(
            "study.n_trials and study.timeout are both null, so the study would never end; "
            "set study.n_trials=<count> or study.timeout=<seconds>."
        )

    _check_positive("study.tpe_startup_trials", study.tpe_startup_trials)
    if study.n_startup_trials < 0 or study.n_warmup_steps < 0:
        raise UserError(
            f"study.n_startup_trials and study.n_warmup_steps must be zero or more but got "
            f"{study.n_startup_trials!r} and {study.n_warmup_steps!r}."
        )

    if not 0.0 < study.percentile <= 100.0:
        raise UserError(
            f"study.percentile must be above 0 and at most 100 (the share of trials kept, in percent) "
            f"but got {study.percentile!r}."
        )

    _check_positive("study.min_resource", study.min_resource)
    _check_positive("study.heartbeat_interval", study.heartbeat_interval)
    if study.grace_period <= study.heartbeat_interval:
        raise UserError(
            f"study.grace_period must be longer than study.heartbeat_interval "
            f"({study.heartbeat_interval} s) but got {study.grace_period!r}."
        )
    if any(quote in study.name for quote in "'\"`"):
        raise UserError(f"study.name must not contain quotes but got {study.name!r}.")
    if study.reduction_factor < 2:
        raise UserError(f"study.reduction_factor must be 2 or more but got {study.reduction_factor!r}.")


def validate(config: SearchConfig) -> None:
    """Check every value that a type cannot check, raising ``UserError`` on the first bad one."""
    _validate_data(config.data)
    _validate_model(config.model)
    _validate_train(config.train)
    _validate_study(config.study)
    _check_choice("export.format", config.export.format, EXPORT_FORMATS)
    _check_positive("diagnostics.batch_size", config.diagnostics.batch_size)
    for verdict in config.diagnostics.prune_verdicts:
        _check_choice("diagnostics.prune_verdicts", verdict, PRUNABLE_VERDICTS)


def absolute_path(path: str) -> str:
    """Resolve ``path`` against the directory the command started in, not Hydra's output folder."""
    if os.path.isabs(path):
        return path

    try:
        from hydra.utils import get_original_cwd

        base = get_original_cwd()
    except ValueError:  # Hydra is not running, for example in tests that compose by hand.
        base = os.getcwd()
    return os.path.normpath(os.path.join(base, path))


def plain_dict(config: Any) -> dict:
    """Return a config, dataclass or DictConfig, as plain nested dicts for YAML and MLflow."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def redact_url(url: str) -> str:
    """Return a storage or tracking URL with any password masked, for tags and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # Not a database URL, such as a journal path, so nothing to hide.
        return url


def check_writable_folder(path: str, key: str) -> None:
    """Raise ``UserError`` unless the file at ``path`` could be created, creating nothing.

    The nearest existing ancestor of the file's folder must be a writable folder.
    """
    existing = Path(path).parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent

    # A pseudo file system such as /proc passes os.access for root but rejects new folders.
    pseudo = existing.resolve().parts[1:2] in (("proc",), ("sys",))
    if pseudo or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{key} points to {path}, but the folder {existing} cannot be written; "
            f"choose a path in a writable folder."
        )
