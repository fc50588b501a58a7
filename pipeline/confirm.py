"""Entry point: ``python -m pipeline.confirm`` retrains a candidate and a baseline on the same seeds.

``confirm.candidate`` is a search-space file that fixes every kernel layer to one
initializer, such as the output of ``pipeline.export``. ``confirm.baseline`` is another
such file, or null for Keras' default, glorot_uniform on every kernel layer, with the
candidate's fixed hyperparameters (such as an exported learning_rate). For each
seed in ``confirm.seeds``, both are trained for the full ``train.epochs`` without
pruning and evaluated once on the test set, the only place this project uses it. The
paired per-seed test accuracies give the verdict (see ``pipeline.verdict``), which is
printed at the end.

MLflow: the experiment is ``<tracking.experiment or study.name>-confirm``, kept apart
from the study's trial runs. It contains one parent run named ``confirm`` with the summary,
the tag ``verdict``, ``verdict.txt``, ``results.json`` and the candidate model trained with
the first seed (``model/candidate-seed<seed>.keras``), and one nested run per config and
seed, named ``candidate-seed<seed>`` or ``baseline-seed<seed>``.

Exit codes: 0 on success, 2 for a user error (reported before any run is created), 130
when interrupted.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import TYPE_CHECKING, Any, Mapping  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pipeline.config import ConfirmConfig, SearchConfig, register_configs, to_object, validate  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

if TYPE_CHECKING:
    from pipeline.verdict import Comparison

logger = logging.getLogger("pipeline.confirm")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

ROLE = "confirm"
ARM_TAG = "confirm.arm"
SEED_TAG = "confirm.seed"
FAIL_REASON_TAG = "confirm.fail_reason"
KERAS_DEFAULT_INITIALIZER = "glorot_uniform"
MODEL_ARTIFACT_PATH = "model"
_EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
_MAX_TAG_LENGTH = 5000


@dataclasses.dataclass(frozen=True)
class Arm:
    """One side of the comparison: a fixed initializer per kernel layer and fixed hyperparameters."""

    role: str
    path: str | None
    labels: Mapping[str, str]
    keras_configs: Mapping[str, Mapping[str, Any]]
    labelled: Mapping[str, Mapping[str, Any]]
    hyperparameters: Mapping[str, Any]
    provenance: Mapping[str, Any] | None

    def describe(self) -> str:
        return self.path or f"Keras default ({KERAS_DEFAULT_INITIALIZER} on every kernel layer)"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The test-set result of one arm trained with one seed."""

    role: str
    seed: int
    run_id: str
    test_accuracy: float
    test_loss: float
    non_finite: str | None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TAG_LENGTH else text[: _MAX_TAG_LENGTH - 3] + "..."


def _check_confirm_settings(confirm: ConfirmConfig) -> None:
    if not confirm.candidate:
        raise UserError(
            "confirm.candidate is not set; set confirm.candidate=<file> to a search-space file "
            "that fixes every layer, such as one written by pipeline.export."
        )

    seeds = list(confirm.seeds)
    if not seeds:
        raise UserError(
            "confirm.seeds is empty; list the seeds to train with, at least 2 for a confidence "
            "interval, such as confirm.seeds=[0,1,2,3,4]."
        )

    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(
            f"confirm.seeds must be distinct non-negative integers but got {seeds}; a repeated "
            f"seed repeats the same pair of runs and makes the interval look narrower than it is."
        )

    if not (math.isfinite(confirm.confidence) and 0.0 < confirm.confidence < 1.0):
        raise UserError(
            f"confirm.confidence must be between 0 and 1 (exclusive) but got {confirm.confidence!r}; "
            f"0.95 gives a 95% confidence interval."
        )

    if len(seeds) < 2:
        logger.warning("confirm.seeds has 1 seed, so the result has no confidence interval and no verdict")


def _keras_default_arm(kernel_layers: list[str], hyperparameters: Mapping[str, Any]) -> Arm:
    """Return glorot_uniform on every kernel layer, with the candidate's fixed hyperparameters.

    Sharing the candidate's hyperparameters, such as an exported learning_rate, keeps the
    initializers the only difference between the two arms.
    """
    config = {"class_name": KERAS_DEFAULT_INITIALIZER, "config": {}}
    return Arm(
        role="baseline",
        path=None,
        labels={layer: KERAS_DEFAULT_INITIALIZER for layer in kernel_layers},
        keras_configs={layer: config for layer in kernel_layers},
        labelled={},
        hyperparameters=dict(hyperparameters),
        provenance=None,
    )


def _load_arm(role: str, value: str, kernel_layers: list[str]) -> Arm:
    """Read a space file that must fix every kernel layer and every hyperparameter."""
    from pipeline.space import load_space, resolve_space_path

    key = f"confirm.{role}"
    path = resolve_space_path(value)
    if not os.path.isfile(path):
        raise UserError(
            f"{key} file {path} not found; set {key}= to a search-space file that fixes every "
            f"layer, such as one written by pipeline.export."
        )

    try:
        space = load_space(path, kernel_layers)
    except UserError as error:
        raise UserError(f"{key} {path} is not a usable search-space file for this model: {error}") from error

    open_layers = {layer: list(labels) for layer, labels in space.layer_choices.items() if len(labels) > 1}
    if open_layers:
        raise UserError(
            f"{key} {path} must fix every layer to one initializer, but these layers have several "
            f"choices: {open_layers}. Use a file written by pipeline.export, or list one label per layer."
        )

    searched = [hp.name for hp in space.hyperparameters if hp.type != "fixed"]
    if searched:
        raise UserError(
            f"{key} {path} searches the hyperparameters {searched}; give each a fixed number "
            f"(such as learning_rate: 0.001), as pipeline.export writes them."
        )

    labels = {layer: choices[0] for layer, choices in space.layer_choices.items()}
    labelled = {
        label: {"name": space.initializers[label].name, "args": dict(space.initializers[label].args)}
        for label in sorted(set(labels.values()))
        if space.initializers[label].args or space.initializers[label].name != label
    }
    provenance = space.raw.get("provenance")
    return Arm(
        role=role,
        path=path,
        labels=labels,
        keras_configs={layer: space.initializers[label].keras_config() for layer, label in labels.items()},
        labelled=labelled,
        hyperparameters={hp.name: hp.value for hp in space.hyperparameters},
        provenance=dict(provenance) if isinstance(provenance, dict) else None,
    )


def _check_arm_shapes(arm: Arm, shapes: Mapping[str, tuple[int, ...]]) -> None:
    from pipeline import initializers

    for layer, config in arm.keras_configs.items():
        try:
            initializers.get(dict(config))(shapes[layer])
        except (ValueError, TypeError) as error:
            raise UserError(
                f"confirm.{arm.role}: initializer {arm.labels[layer]!r} cannot initialize layer "
                f"{layer!r} with kernel shape {tuple(shapes[layer])}: {error}. Change that layer in {arm.describe()}."
            ) from error


def _experiment_name(config: SearchConfig) -> str:
    return f"{config.tracking.experiment or config.study.name}-confirm"


def _provenance_tag(arm: Arm) -> str:
    if arm.path is None:
        return "Keras default"
    if arm.provenance is None:
        return "none (the file has no provenance section)"
    return json.dumps(arm.provenance, sort_keys=True, default=str)


def _start_parent(tracker: Any, config: SearchConfig, arms: list[Arm], resolved: Mapping[str, Any] | None) -> str:
    from pipeline import tracking

    tags = {tracking.ROLE_TAG: ROLE, tracking.STUDY_TAG: config.study.name}
    for arm in arms:
        tags[f"confirm.{arm.role}"] = arm.describe()
        tags[f"confirm.{arm.role}.provenance"] = _clip(_provenance_tag(arm))

    # NOTE: Tracker has no public method that creates its experiment. This calls the private
    # helper that Tracker.start_parent uses, so the artifact location follows tracking.artifact_location.
    experiment_id = tracker._ensure_experiment()
    run = tracker.client.create_run(experiment_id, run_name=ROLE, tags=tags)
    run_id = run.info.run_id
    params = {"confirm.seeds": list(config.confirm.seeds), "confirm.confidence": config.confirm.confidence,
              "model.name": config.model.name, "train.epochs": config.train.epochs}
    tracker.client.log_batch(run_id, params=[_param(key, value) for key, value in params.items()])
    if resolved is not None:
        tracker.client.log_dict(run_id, dict(resolved), "config.yaml")
    for arm in arms:
        if arm.path is not None:
            tracker.client.log_artifact(run_id, arm.path, artifact_path=f"inputs/{arm.role}")
    logger.info("created MLflow run %s (%s) in experiment %r", run_id, ROLE, tracker.experiment_name)
    return run_id


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value))


def _run_params(config: SearchConfig, arm: Arm, seed: int) -> dict[str, Any]:
    from pipeline.objective import fixed_params

    params: dict[str, Any] = {f"{layer}.kernel_initializer": label for layer, label in arm.labels.items()}
    for label, definition in arm.labelled.items():
        params[f"initializer.{label}"] = json.dumps(definition, sort_keys=True)
    params.update(fixed_params(config, arm.hyperparameters))
    params["space"] = arm.describe()
    params["data.test_subset"] = config.data.test_subset
    params["seed"] = seed
    return params


def _epoch_logger(tracker: Any, run_id: str, name: str, epochs: int, progress: bool) -> Any:
    """Return a Keras callback that logs each epoch's metrics to ``run_id`` with step = epoch."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            values = {key: float(value) for key, value in (logs or {}).items() if key in _EPOCH_METRICS}
            tracker.log_epoch(run_id, epoch, values)
            if progress:
                logger.info(
                    "%s epoch %d/%d: %s", name, epoch + 1, epochs,
                    " ".join(f"{key} {value:.4f}" for key, value in values.items()),
                )

    return EpochLogger()


def _train_and_test(config: SearchConfig, dataset: Any, arm: Arm, seed: int, run_id: str, tracker: Any) -> tuple[Any, dict[str, float], str | None]:
    """Train ``arm`` with ``seed`` and evaluate it on the test set.

    Returns the model, its test metrics, and the reason training stopped early when the
    loss became NaN or infinite (None otherwise).
    """
    from pipeline import initializers, training
    from pipeline.model import build_model

    name = f"{arm.role}-seed{seed}"
    training.seed_everything(seed, config.train.deterministic)
    model = build_model(config.model, arm.keras_configs, num_classes=len(dataset.class_names))
    if initializers.needs_data(model):
        # LSUV rescales its layers on a training batch, the same batch that pipeline.objective uses.
        initializers.apply_lsuv(model, dataset.x_train[: config.diagnostics.batch_size])
    callbacks = [_epoch_logger(tracker, run_id, name, config.train.epochs, config.train.progress), training.StopOnNonFiniteLoss()]
    non_finite = None
    try:
        training.fit(
            model, dataset, config.train, seed, callbacks,
            learning_rate=arm.hyperparameters.get("learning_rate"),
            momentum=arm.hyperparameters.get("momentum"),
            batch_size=arm.hyperparameters.get("batch_size"),
        )
    except training.NonFiniteLossError as error:
        # NOTE: the stopped model is still evaluated, so a diverged run counts with the
        # accuracy of its non-finite outputs instead of leaving its seed unpaired.
        non_finite = f"non-finite loss: {error}"
        logger.warning("%s stopped: %s; its test accuracy is measured on the stopped model", name, non_finite)

    batch_size = int(arm.hyperparameters.get("batch_size") or config.train.batch_size)
    scores = model.evaluate(dataset.x_test, dataset.y_test, batch_size=batch_size, verbose=0, return_dict=True)
    return model, {"test_accuracy": float(scores["accuracy"]), "test_loss": float(scores["loss"])}, non_finite


def _run_one(config: SearchConfig, dataset: Any, arm: Arm, seed: int, tracker: Any, parent_id: str, model_folder: str | None) -> RunResult:
    """Train and test one arm with one seed in its own nested MLflow run."""
    from pipeline import training

    name = f"{arm.role}-seed{seed}"
    run = tracker.client.create_run(
        tracker.experiment_id,
        run_name=name,
        tags={"mlflow.parentRunId": parent_id, ARM_TAG: arm.role, SEED_TAG: str(seed)},
    )
    run_id = run.info.run_id
    tracker.client.log_batch(run_id, params=[_param(key, value) for key, value in _run_params(config, arm, seed).items()])
    started = time.monotonic()
    try:
        model, scores, non_finite = _train_and_test(config, dataset, arm, seed, run_id, tracker)
        tracker.client.log_batch(run_id, metrics=_metrics(scores))
        if model_folder is not None:
            _log_model(tracker, parent_id, model, os.path.join(model_folder, f"{name}.keras"))
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        tracker.client.set_tag(run_id, FAIL_REASON_TAG, _clip(f"{type(error).__name__}: {error}"))
        tracker.client.set_terminated(run_id, status=status)
        raise
    finally:
        training.release_memory()

    if non_finite is not None:
        tracker.client.set_tag(run_id, FAIL_REASON_TAG, non_finite)
    tracker.client.set_terminated(run_id, status="FAILED" if non_finite else "FINISHED")
    logger.info(
        "%s: test_accuracy %.4f test_loss %.4f in %.1f s",
        name, scores["test_accuracy"], scores["test_loss"], time.monotonic() - started,
    )
    return RunResult(arm.role, seed, run_id, scores["test_accuracy"], scores["test_loss"], non_finite)


def _metrics(values: Mapping[str, float], step: int = 0) -> list:
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    return [Metric(key, float(value), timestamp, step) for key, value in values.items()]


def _log_model(tracker: Any, parent_id: str, model: Any, path: str) -> None:
    """Save the model in the native ``.keras`` format and log it under ``model/`` of the parent run."""
    model.save(path)
    tracker.client.log_artifact(parent_id, path, artifact_path=MODEL_ARTIFACT_PATH)
    logger.info("logged the trained model %s to MLflow run %s", os.path.basename(path), parent_id)


def _summary_metrics(comparison: Comparison) -> dict[str, float]:
    """Return the comparison as parent-run metrics, leaving out the ones that are undefined (NaN)."""
    values = {
        "candidate_test_accuracy_mean": comparison.candidate_mean,
        "candidate_test_accuracy_std": comparison.candidate_std,
        "baseline_test_accuracy_mean": comparison.baseline_mean,
        "baseline_test_accuracy_std": comparison.baseline_std,
        "difference_mean": comparison.difference_mean,
        "difference_std": comparison.difference_std,
        "difference_ci_low": comparison.ci_low,
        "difference_ci_high": comparison.ci_high,
        "p_value": comparison.p_value,
        "significant": float(comparison.significant),
        "seeds": float(comparison.seeds),
    }
    return {key: value for key, value in values.items() if not math.isnan(value)}


def _finite_or_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """Replace NaN with None, because JSON has no NaN."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in values.items()}


def _finish_parent(tracker: Any, parent_id: str, comparison: Comparison, results: list[RunResult]) -> None:
    tracker.client.log_batch(parent_id, metrics=_metrics(_summary_metrics(comparison)))
    tracker.client.set_tag(parent_id, "verdict", comparison.verdict)
    non_finite = [f"{result.role}-seed{result.seed}" for result in results if result.non_finite]
    if non_finite:
        tracker.client.set_tag(parent_id, "confirm.non_finite_runs", _clip(" ".join(non_finite)))
    tracker.client.log_text(parent_id, comparison.verdict + "\n", "verdict.txt")
    table = [_finite_or_none(dataclasses.asdict(result)) for result in results]
    summary = _finite_or_none(dataclasses.asdict(comparison))
    tracker.client.log_dict(parent_id, {"comparison": summary, "runs": table}, "results.json")
    tracker.client.set_terminated(parent_id, status="FINISHED")


def _prepare(config: SearchConfig) -> tuple[Arm, Arm, Any]:
    """Check the config, both files and the data before any MLflow run exists; return both arms and the data."""
    from pipeline import model as model_module
    from pipeline import tracking
    from pipeline.data import load_dataset

    validate(config)
    _check_confirm_settings(config.confirm)
    tracking.check_uri(tracking.resolve_uri(config.tracking.uri))

    kernel_layers = model_module.kernel_layers(config.model)
    candidate = _load_arm("candidate", config.confirm.candidate, kernel_layers)
    if config.confirm.baseline:
        baseline = _load_arm("baseline", config.confirm.baseline, kernel_layers)
    else:
        baseline = _keras_default_arm(kernel_layers, candidate.hyperparameters)

    if dict(candidate.hyperparameters) != dict(baseline.hyperparameters):
        logger.warning(
            "candidate and baseline fix different hyperparameters (%s and %s), so the comparison "
            "measures more than the initializers",
            dict(candidate.hyperparameters), dict(baseline.hyperparameters),
        )

    dataset = load_dataset(config.data)
    model_module.check_input_shape(config.model, dataset.x_test.shape[1:], dataset.source)
    shapes = model_module.kernel_shapes(config.model, num_classes=len(dataset.class_names))
    _check_arm_shapes(candidate, shapes)
    _check_arm_shapes(baseline, shapes)
    return candidate, baseline, dataset


def run_confirm(config: SearchConfig, resolved: Mapping[str, Any] | None = None) -> Comparison:
    """Train both arms on every seed, test them, log everything and return the ``Comparison``.

    ``resolved`` is the composed config as a dict, stored as ``config.yaml`` on the parent run.
    """
    from pipeline.tracking import Tracker
    from pipeline.verdict import compare

    candidate, baseline, dataset = _prepare(config)
    tracking_config = dataclasses.replace(config.tracking, experiment=_experiment_name(config))
    tracker = Tracker(tracking_config, config.study.name)
    parent_id = _start_parent(tracker, config, [candidate, baseline], resolved)
    seeds = list(config.confirm.seeds)
    logger.info(
        "confirm: candidate %s against baseline %s on seeds %s, %d epochs each",
        candidate.describe(), baseline.describe(), seeds, config.train.epochs,
    )

    results: list[RunResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="confirm-model-") as model_folder:
            for index, seed in enumerate(seeds):
                results.append(_run_one(config, dataset, candidate, seed, tracker, parent_id, model_folder if index == 0 else None))
                results.append(_run_one(config, dataset, baseline, seed, tracker, parent_id, None))
    except BaseException as error:
        tracker.client.set_terminated(parent_id, status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise

    comparison = compare(
        [result.test_accuracy for result in results if result.role == "candidate"],
        [result.test_accuracy for result in results if result.role == "baseline"],
        config.confirm.confidence,
    )
    _finish_parent(tracker, parent_id, comparison, results)
    logger.info("confirm: %s (MLflow run %s)", comparison.verdict, parent_id)
    return comparison


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        config = to_object(cfg)
        comparison = run_confirm(config, OmegaConf.to_container(cfg, resolve=True))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted; the MLflow runs are closed as KILLED", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)

    print(comparison.verdict)


if __name__ == "__main__":
    main()
