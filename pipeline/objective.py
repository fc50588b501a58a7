"""One trial: sample initializers, build the model, train with pruning, and record the result.

The trial's value is the validation accuracy after the last epoch. The test set is
never used here.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import keras
import numpy as np
import optuna
import psutil
from optuna_integration import KerasPruningCallback

from pipeline import diagnostics, training
from pipeline import initializers as custom_initializers
from pipeline.config import SearchConfig, plain_dict
from pipeline.interrupts import StopSignals
from pipeline.model import kernel_layers
from pipeline.space import SearchSpace, suggest
from pipeline.tracking import Tracker
from pipeline.workers import LOST_PREFIX, RETRY_OF_ATTR, WORKER_ATTR, worker_identity

logger = logging.getLogger(__name__)

MONITOR = "val_accuracy"


class PrunedAtInit(optuna.TrialPruned):
    """The signal check at initialization found a verdict listed in ``diagnostics.prune_verdicts``."""


class TrialFailed(RuntimeError):
    """A trial that ended without a value; the study records it as FAIL and goes on."""


class EpochRecorder(keras.callbacks.Callback):
    """Log each epoch's metrics to the trial's MLflow run (step = epoch) and to the log."""

    def __init__(self, tracker: Tracker, run_id: str, trial_number: int, epochs: int, progress: bool) -> None:
        super().__init__()
        self._tracker = tracker
        self._run_id = run_id
        self._trial_number = trial_number
        self._epochs = epochs
        self._progress = progress
        self.run_id = run_id
        self.last_epoch = -1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {key: float(value) for key, value in (logs or {}).items() if key in ("loss", "accuracy", "val_loss", "val_accuracy")}
        self._tracker.log_epoch(self._run_id, epoch, logs)
        self.last_epoch = epoch
        if self._progress:
            logger.info(
                "trial %d epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f",
                self._trial_number, epoch + 1, self._epochs,
                logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
                logs.get("val_loss", float("nan")), logs.get("val_accuracy", float("nan")),
            )


class PruneBeforeLastEpoch(keras.callbacks.Callback):
    """Optuna's Keras pruning callback, except that the last epoch is reported but never pruned.

    Pruning after the last epoch saves no training and drops a finished trial's value.
    """

    def __init__(self, trial: optuna.Trial, monitor: str, epochs: int) -> None:
        super().__init__()
        self._pruning = KerasPruningCallback(trial, monitor)
        self._trial = trial
        self._monitor = monitor
        self._epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 < self._epochs:
            self._pruning.on_epoch_end(epoch, logs)
            return

        value = (logs or {}).get(self._monitor)
        if value is not None:
            self._trial.report(float(value), step=epoch)


class InterruptibleEpochs(keras.callbacks.Callback):
    """Lets a stop signal end training at once inside an epoch, and at its edges otherwise.

    It must come first among the callbacks, so that the epoch's end is marked before
    the other callbacks write to Optuna and MLflow.
    """

    def __init__(self, signals: StopSignals) -> None:
        super().__init__()
        self._signals = signals

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._signals.raise_pending()
        self._signals.interruptible = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._signals.interruptible = False
        self._signals.raise_pending()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._signals.interruptible = False


def fixed_params(config: SearchConfig, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """Return the hyperparameters a trial did not search, as MLflow params."""
    train = plain_dict(config.train)
    for name, value in hyperparameters.items():
        train[name] = value
    params = {f"train.{key}": value for key, value in train.items() if key != "progress"}
    params["model.name"] = config.model.name
    params["space"] = config.space
    for key in ("path", "validation_fraction", "split_seed", "train_subset", "val_subset", "test_subset"):
        params[f"data.{key}"] = getattr(config.data, key)
    return params


def _summary(initializers: Mapping[str, str], hyperparameters: Mapping[str, Any]) -> str:
    parts = [f"{layer}={label}" for layer, label in initializers.items()]
    parts += [f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}" for name, value in hyperparameters.items()]
    return " ".join(parts)


class Objective:
    """The callable that ``study.optimize`` runs once per trial."""

    def __init__(
        self,
        config: SearchConfig,
        dataset: Any,
        space: SearchSpace,
        tracker: Tracker,
        parent_run_id: str,
        on_trial_start: Callable[[], None] | None = None,
        signals: StopSignals | None = None,
    ) -> None:
        self.on_trial_start = on_trial_start
        self.signals = signals
        self.models = training.ModelCache()
        self.config = config
        self.dataset = dataset
        self.space = space
        self.tracker = tracker
        self.parent_run_id = parent_run_id

    def __call__(self, trial: optuna.Trial) -> float:
        if self.on_trial_start is not None:
            self.on_trial_start()
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        sample = suggest(trial, self.space)
        seed = self.config.train.seed + trial.number
        trial.set_user_attr("seed", seed)

        params = {**{f"{layer}.kernel_initializer": label for layer, label in sample.initializers.items()}}
        params.update({name: value for name, value in sample.hyperparameters.items()})
        params.update(fixed_params(self.config, sample.hyperparameters))
        run_id = self.tracker.start_trial(self.parent_run_id, trial.number, params, seed)
        trial.set_user_attr("mlflow_run_id", run_id)

        summary = _summary(sample.initializers, sample.hyperparameters)
        logger.info("trial %d started: %s (seed %d)", trial.number, summary, seed)
        started = time.monotonic()
        recorder = EpochRecorder(self.tracker, run_id, trial.number, self.config.train.epochs, self.config.train.progress)
        try:
            value = self._train(trial, sample, seed, recorder)
        except PrunedAtInit as pruned:
            self.tracker.end_trial(run_id, "PRUNED", pruned_at_epoch=-1, prune_reason=str(pruned))
            logger.info("trial %d pruned before the first epoch: %s", trial.number, pruned)
            raise
        except optuna.TrialPruned:
            reason = f"{MONITOR} below the pruner's threshold after epoch {recorder.last_epoch + 1}"
            self.tracker.end_trial(run_id, "PRUNED", pruned_at_epoch=recorder.last_epoch, prune_reason=reason)
            logger.info(
                "trial %d pruned after epoch %d/%d in %.1f s",
                trial.number, recorder.last_epoch + 1, self.config.train.epochs, time.monotonic() - started,
            )
            raise
        except training.NonFiniteLossError as error:
            reason = f"non-finite loss: {error}"
            trial.set_user_attr("fail_reason", reason)
            self.tracker.end_trial(run_id, "FAIL", fail_reason=reason)
            logger.warning("trial %d failed after %.1f s: %s", trial.number, time.monotonic() - started, reason)
            raise TrialFailed(reason) from error
        except KeyboardInterrupt as error:
            reason = f"interrupted by {error or 'KeyboardInterrupt'} during training"
            trial.set_user_attr("fail_reason", reason)
            trial.study.set_user_attr(f"{LOST_PREFIX}{trial.number}", reason)
            self.tracker.end_trial(run_id, "FAIL", fail_reason=reason)
            if self.config.study.retry_lost_trials:
                trial.study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
            logger.warning("trial %d %s after %.1f s", trial.number, reason, time.monotonic() - started)
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("fail_reason", reason)
            self.tracker.end_trial(run_id, "FAIL", fail_reason=reason)
            logger.warning("trial %d failed after %.1f s: %s", trial.number, time.monotonic() - started, reason, exc_info=True)
            raise
        finally:
            training.release_memory()
            rss_mb = psutil.Process().memory_info().rss / 2**20
            trial.set_user_attr("rss_mb", round(rss_mb, 1))
            self.tracker.log_metric(run_id, "rss_mb", rss_mb)

        self.tracker.end_trial(run_id, "COMPLETE", value=value)
        logger.info("trial %d finished: %s = %.4f in %.1f s", trial.number, MONITOR, value, time.monotonic() - started)
        return value

    def _check_signal(self, trial: optuna.Trial, model: keras.Model, run_id: str) -> None:
        """Measure the signal at initialization, log it, and prune on a listed verdict."""
        settings = self.config.diagnostics
        x_batch = self.dataset.x_train[: settings.batch_size]
        y_batch = self.dataset.y_train[: settings.batch_size]
        report = diagnostics.measure_signal(model, x_batch, y_batch, kernel_layers(self.config.model))
        self.tracker.log_signal(run_id, diagnostics.report_metrics(report), diagnostics.report_table(report), report.verdict)
        trial.set_user_attr("init_verdict", report.verdict)
        if report.verdict not in settings.prune_verdicts:
            return

        # The pruned trial reports its accuracy at initialization, so samplers that learn
        # from pruned trials, such as TPE, rank it with a measured value.
        predictions = np.argmax(model.predict_on_batch(x_batch), axis=1)
        trial.report(float(np.mean(predictions == y_batch)), step=0)
        raise PrunedAtInit(
            f"signal {report.verdict} at initialization (std ratio {report.std_ratio:.3g}, "
            f"gradient ratio {report.gradient_ratio:.3g})"
        )

    def _train(self, trial: optuna.Trial, sample: Any, seed: int, recorder: EpochRecorder) -> float:
        training.seed_everything(seed, self.config.train.deterministic)
        initializers = {layer: self.space.initializers[label].keras_config() for layer, label in sample.initializers.items()}
        model = self.models.get(self.config.model, initializers, len(self.dataset.class_names))
        if custom_initializers.needs_data(model):
            custom_initializers.apply_lsuv(model, self.dataset.x_train[: self.config.diagnostics.batch_size])
        if self.config.diagnostics.enabled:
            self._check_signal(trial, model, recorder.run_id)
        callbacks = [recorder, training.StopOnNonFiniteLoss(), PruneBeforeLastEpoch(trial, MONITOR, self.config.train.epochs)]
        if self.signals is not None:
            callbacks.insert(0, InterruptibleEpochs(self.signals))
        history = training.fit(
            model,
            self.dataset,
            self.config.train,
            seed,
            callbacks,
            learning_rate=sample.hyperparameters.get("learning_rate"),
            momentum=sample.hyperparameters.get("momentum"),
            batch_size=sample.hyperparameters.get("batch_size"),
        )
        return history[MONITOR][-1]
