"""Optuna storage, sampler and pruner, and opening a study by name.

The trial budget and the recovery of lost trials are in ``pipeline.workers``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import optuna

from pipeline.config import StudyConfig, absolute_path, check_writable_folder
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"


def resolve_storage_url(url: str) -> str:
    """Make relative SQLite and journal paths absolute against the start directory."""
    if url.startswith(JOURNAL_PREFIX):
        return JOURNAL_PREFIX + absolute_path(url[len(JOURNAL_PREFIX):])

    if url.startswith(SQLITE_PREFIX) and not os.path.isabs(url[len(SQLITE_PREFIX):]):
        return SQLITE_PREFIX + absolute_path(url[len(SQLITE_PREFIX):])

    return url


def check_storage_url(url: str) -> None:
    """Reject a malformed storage URL or an unwritable file location, creating nothing."""
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path or os.path.isdir(path):
            raise UserError(
                f"study.storage {url!r} needs a file path, such as journal:mlruns/optuna.journal, "
                f"but {path or 'the empty path'} is not a file name."
            )
        check_writable_folder(path, "study.storage")
        return

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    hint = "use sqlite:///mlruns/optuna.db, a database URL such as postgresql://user@host/db, or journal:<file>"
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except ArgumentError as error:
        raise UserError(f"study.storage {url!r} is not a valid storage URL ({error}); {hint}.") from error
    except NoSuchModuleError as error:
        raise UserError(
            f"study.storage {url!r} names a database driver that is not installed or does not "
            f"exist ({error}); install the driver or {hint}."
        ) from error

    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise UserError(f"study.storage {url!r} has no database file, so the study would be lost; {hint}.")
        check_writable_folder(parsed.database, "study.storage")


def create_storage(
    url: str,
    config: StudyConfig | None = None,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """Open the storage, with heartbeats on databases so dead workers' trials end as FAIL.

    A trial whose worker sent no heartbeat for ``config.grace_period`` seconds is marked
    FAIL when any worker next starts a trial, and ``stale_trial_callback`` is called
    for it. The journal storage has no heartbeat in Optuna 5.
    """
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(path)
        return optuna.storages.JournalStorage(backend)

    if url.startswith(SQLITE_PREFIX):
        Path(url[len(SQLITE_PREFIX):]).parent.mkdir(parents=True, exist_ok=True)

    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental in Optuna 5; the interface is pinned below 6.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=config.heartbeat_interval if config else None,
                grace_period=config.grace_period if config else None,
                heartbeat_stale_trial_callback=stale_trial_callback,
                # A stop signal that cuts a write short keeps the database locked past any
                # timeout, so pipeline.interrupts raises only outside storage writes.
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
    except Exception as error:  # SQLAlchemy raises driver-specific types for one cause.
        raise UserError(f"study.storage {url!r} could not be opened: {error}") from error


def create_sampler(config: StudyConfig, grid_space: Callable[[], dict] | None, seed_offset: int) -> optuna.samplers.BaseSampler:
    """Create the sampler; ``seed_offset`` (the trials already in the study) keeps reruns from repeating draws."""
    seed = config.seed + seed_offset
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.tpe_startup_trials)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(), seed=seed)

    raise UserError(f"study.sampler must be tpe, random or grid but got {config.sampler!r}.")


def create_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Create the pruner; steps are epochs, counted from 0."""
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps
        )
    if config.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            config.percentile, n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps
        )
    if config.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_resource, reduction_factor=config.reduction_factor
        )
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.min_resource, reduction_factor=config.reduction_factor
        )
    if config.pruner == "none":
        return optuna.pruners.NopPruner()

    raise UserError(
        f"study.pruner must be median, percentile, successive_halving, hyperband or none but got {config.pruner!r}."
    )


def open_study(config: StudyConfig, storage: optuna.storages.BaseStorage, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study or load it by name; a loaded study must maximize like a new one."""
    try:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except Exception as error:  # Storage back ends raise their own types for one cause.
        raise UserError(f"Study {config.name!r} could not be created or loaded: {error}") from error

    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(
            f"Study {config.name!r} already exists and minimizes; choose another study.name."
        )

    return study


def load_existing_study(config: StudyConfig, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load a study that must exist already, for export."""
    try:
        return optuna.load_study(study_name=config.name, storage=storage)
    except KeyError as error:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        raise UserError(
            f"Study {config.name!r} was not found in {config.storage}; the studies there are "
            f"{names or 'none'}. Set study.name= or study.storage=, or run pipeline.search first."
        ) from error
