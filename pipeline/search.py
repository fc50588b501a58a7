"""Entry point: ``python -m pipeline.search`` runs one initializer study per composed config.

Exit codes: 0 when the study ran or its budget was already spent. 2 for a user error,
reported in one message before any study or run is created. 130 after SIGINT (Ctrl-C)
and 143 after SIGTERM, with the running trial recorded as lost.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import hydra  # noqa: E402
import optuna  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pipeline.config import (  # noqa: E402
    SearchConfig,
    absolute_path,
    check_writable_folder,
    redact_url,
    register_configs,
    to_object,
    validate,
)
from pipeline.errors import UserError  # noqa: E402
from pipeline.interrupts import Interrupted, StopSignals  # noqa: E402

logger = logging.getLogger("pipeline.search")

EXIT_USER_ERROR = 2


def _prepare(config: SearchConfig) -> tuple:
    """Check everything that can be checked before a study or run exists; load the data."""
    from pipeline import model as model_module
    from pipeline import space as space_module
    from pipeline import study as study_module
    from pipeline import tracking
    from pipeline.data import load_dataset

    validate(config)
    # The last epoch is never pruned, so pruning needs a checked epoch before it.
    if config.study.pruner in ("median", "percentile") and config.study.n_warmup_steps >= config.train.epochs - 1:
        logger.warning(
            "study.n_warmup_steps=%d with train.epochs=%d leaves no epoch at which a trial can be pruned, "
            "so every trial trains all epochs; lower study.n_warmup_steps or raise train.epochs to prune.",
            config.study.n_warmup_steps, config.train.epochs,
        )
    storage_url = study_module.resolve_storage_url(config.study.storage)
    study_module.check_storage_url(storage_url)
    tracking.check_uri(tracking.resolve_uri(config.tracking.uri))
    location = config.tracking.artifact_location
    if location and "://" not in location:
        check_writable_folder(os.path.join(absolute_path(location), "artifact"), "tracking.artifact_location")

    space = space_module.load_space(config.space, model_module.kernel_layers(config.model))
    if config.study.sampler == "grid":
        space_module.grid(space)

    dataset = load_dataset(config.data)
    model_module.check_input_shape(config.model, dataset.x_train.shape[1:], dataset.source)
    shapes = model_module.kernel_shapes(config.model, num_classes=len(dataset.class_names))
    space_module.check_kernel_shapes(space, shapes)
    return storage_url, space, dataset


def _devices() -> tuple[str, str]:
    """Return the Keras backend and its visible accelerators, for the worker's start line."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    elif backend == "jax":
        import jax

        gpus = [str(device) for device in jax.devices() if device.platform != "cpu"]
    elif backend == "torch":
        import torch

        gpus = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    else:
        gpus = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    described = ", ".join(gpus) if gpus else "CPU only"
    if visible is not None:
        described += f" (CUDA_VISIBLE_DEVICES={visible})"
    return backend, described


def _summary(study: optuna.Study) -> tuple[dict, dict]:
    counts = {state.name: 0 for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)}
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name in counts:
            counts[trial.state.name] += 1

    metrics = {f"trials_{state.lower()}": count for state, count in counts.items()}
    tags = {}
    if counts["COMPLETE"]:
        metrics["best_val_accuracy"] = study.best_value
        tags["best_trial"] = str(study.best_trial.number)
        tags["best_params"] = " ".join(f"{k}={v}" for k, v in study.best_params.items())
    return metrics, tags


def _budget_spent(config: SearchConfig, study: optuna.Study, deadline: float | None) -> bool:
    from pipeline.workers import used_budget

    if deadline is not None and time.monotonic() >= deadline:
        return True

    if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
        return True

    # Waiting trials (queued by enqueue_trial or a retry) are part of the budget and still run.
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        return False

    return config.study.n_trials is not None and used_budget(study) >= config.study.n_trials


def _optimize(config: SearchConfig, study: optuna.Study, objective, gate, recover, signals: StopSignals) -> None:
    """Run trials one at a time until the budget or the timeout is spent, or until a stop signal arrives."""
    from pipeline.objective import TrialFailed

    deadline = None if config.study.timeout is None else time.monotonic() + config.study.timeout
    while True:
        signals.raise_pending()
        gate.acquire()
        try:
            recover()
            if _budget_spent(config, study, deadline):
                return
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        finally:
            gate.release()


def run_search(config: SearchConfig, resolved: dict) -> int:
    """Run the study that ``config`` describes and return the exit code.

    Stop signals are handled from the first store write on. One that arrives before
    the trials ends the run before any trial starts, and one that arrives after the
    last trial gives its exit code once the records are closed.
    """
    storage_url, space, dataset = _prepare(config)
    signals = StopSignals()
    signals.install()
    try:
        exit_code = _run_study(config, resolved, storage_url, space, dataset, signals)
    finally:
        signals.restore()
    if exit_code == 0 and signals.pending is not None:
        return 128 + signals.pending

    return exit_code


def _run_study(config: SearchConfig, resolved: dict, storage_url: str, space, dataset, signals: StopSignals) -> int:
    """Open the stores, run the trials and close the study's records, with ``signals`` installed."""
    from pipeline import space as space_module
    from pipeline import study as study_module
    from pipeline import workers
    from pipeline.best import best_document
    from pipeline.objective import Objective
    from pipeline.reports import log_study_report
    from pipeline.tracking import Tracker

    retry = config.study.retry_lost_trials
    try:
        gate = workers.TrialGate(storage_url, config.study.name)
        gate.acquire()
    except Exception as error:  # SQLAlchemy raises driver-specific types for one cause.
        raise UserError(f"study.storage {redact_url(storage_url)} could not be opened: {error}") from error

    logger.info("worker %s: Keras backend %s, devices %s", workers.worker_identity(), *_devices())
    try:
        tracker = Tracker(config.tracking, config.study.name)
        close_run = lambda run_id, reason: tracker.end_trial(run_id, "FAIL", fail_reason=reason)  # noqa: E731
        storage = study_module.create_storage(storage_url, config.study, workers.stale_trial_callback(retry, close_run))
        study = study_module.open_study(config.study, storage, study_module.create_pruner(config.study))
        study.sampler = study_module.create_sampler(config.study, lambda: space_module.grid(space), seed_offset=len(study.trials))
        parent_id = tracker.start_parent(storage_url, resolved)
        workers.recover_dead_workers(study, retry, close_run)
        used = workers.used_budget(study)
    finally:
        gate.release()

    logger.info(
        "study %r in %s: %d of %s trials used; MLflow parent run %s",
        study.study_name, redact_url(storage_url), used,
        "unlimited" if config.study.n_trials is None else config.study.n_trials, parent_id,
    )

    objective = Objective(config, dataset, space, tracker, parent_id, on_trial_start=gate.release, signals=signals)
    status = "FINISHED"
    exit_code = 0
    started = time.monotonic()
    try:
        _optimize(config, study, objective, gate, lambda: workers.recover_dead_workers(study, retry, close_run), signals)
        signals.raise_pending()
    except Interrupted as interruption:
        status = "KILLED"
        exit_code = 128 + interruption.signal_number
        logger.warning("stopped by %s; a trial that was running is recorded as FAIL in Optuna and MLflow", interruption)
    finally:
        metrics, tags = _summary(study)
        metrics["run_wall_time_s"] = time.monotonic() - started
        tracker.end_parent(parent_id, metrics, tags, status)
        if metrics["trials_complete"]:
            tracker.log_dict(parent_id, best_document(study, space, redact_url(storage_url)), "best_config.yaml")
        logger.info(
            "study %r: %d complete, %d pruned, %d failed; best val_accuracy %s",
            study.study_name, metrics["trials_complete"], metrics["trials_pruned"], metrics["trials_fail"],
            f"{metrics['best_val_accuracy']:.4f} (trial {tags['best_trial']})" if "best_trial" in tags else "none yet",
        )
    if exit_code == 0:
        try:
            log_study_report(tracker, parent_id, study)
        except Exception:  # The report is optional: a missing plotting library must not fail a finished study.
            logger.warning("the study report of %r could not be made", study.study_name, exc_info=True)
    return exit_code


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        config = to_object(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        exit_code = run_search(config, resolved)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    main()
