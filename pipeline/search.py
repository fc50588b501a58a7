"""Entry point: ``python -m pipeline.search`` runs one initializer study per composed config.

Exit codes: 0 when the study ran or its budget was already spent, 2 for a user error
(reported in one message, before any study or run is created), 130 when interrupted.
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

from pipeline.config import SearchConfig, redact_url, register_configs, to_object, validate  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

logger = logging.getLogger("pipeline.search")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _prepare(config: SearchConfig) -> tuple:
    """Check everything that can be checked before a study or run exists; load the data."""
    from pipeline import model as model_module
    from pipeline import space as space_module
    from pipeline import study as study_module
    from pipeline import tracking
    from pipeline.data import load_dataset

    validate(config)
    storage_url = study_module.resolve_storage_url(config.study.storage)
    study_module.check_storage_url(storage_url)
    tracking.check_uri(tracking.resolve_uri(config.tracking.uri))

    space = space_module.load_space(config.space, model_module.kernel_layers(config.model))
    if config.study.sampler == "grid":
        space_module.grid(space)

    dataset = load_dataset(config.data)
    shapes = model_module.kernel_shapes(config.model, num_classes=len(dataset.class_names))
    space_module.check_kernel_shapes(space, shapes)
    return storage_url, space, dataset


def _close_stale_run(tracker, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Close the MLflow run of a trial that Optuna failed because its worker stopped."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    logger.warning("trial %d of a stopped worker is marked FAIL", trial.number)
    if run_id:
        tracker.end_trial(run_id, "FAIL", fail_reason="the worker running this trial stopped sending heartbeats")


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


def run_search(config: SearchConfig, resolved: dict) -> int:
    """Run the study that ``config`` describes and return the exit code."""
    from pipeline import space as space_module
    from pipeline import study as study_module
    from pipeline.best import best_document
    from pipeline.objective import Objective, TrialFailed
    from pipeline.tracking import Tracker

    storage_url, space, dataset = _prepare(config)
    tracker = Tracker(config.tracking, config.study.name)
    storage = study_module.create_storage(storage_url, stale_trial_callback=lambda s, t: _close_stale_run(tracker, s, t))
    study = study_module.open_study(config.study, storage, study_module.create_pruner(config.study))
    study.sampler = study_module.create_sampler(config.study, lambda: space_module.grid(space), seed_offset=len(study.trials))
    parent_id = tracker.start_parent(storage_url, resolved)

    remaining = study_module.remaining_trials(config.study, study)
    logger.info(
        "study %r in %s: %d trials finished, %s to run; MLflow parent run %s",
        study.study_name, redact_url(storage_url), study_module.count_finished(study),
        "no count limit" if remaining is None else remaining, parent_id,
    )

    status = "FINISHED"
    exit_code = 0
    started = time.monotonic()
    try:
        if remaining != 0:
            budget = study_module.budget_callback(config.study)
            study.optimize(
                Objective(config, dataset, space, tracker, parent_id),
                n_trials=remaining,
                timeout=config.study.timeout,
                catch=(TrialFailed,),
                callbacks=[budget] if budget else None,
            )
    except KeyboardInterrupt:
        status = "KILLED"
        exit_code = EXIT_INTERRUPTED
        logger.warning("interrupted; the running trial is recorded as FAIL in Optuna and MLflow")
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
