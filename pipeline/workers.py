"""Workers on one study: the trial budget, the start lock, and recovery of lost trials.

A trial is *lost* when its worker was killed or interrupted before the trial ended. Lost
trials are marked FAIL and listed in the study user attribute ``lost_trial_<number>``,
because a finished trial's own attributes cannot change any more. They do not use the
budget, so a restarted worker replaces them: with the same parameters when
``study.retry_lost_trials`` is true, with a fresh sample otherwise.

``study.n_trials`` counts the other trials: complete, pruned, failed in training (for
example with a non-finite loss), and those running or waiting in any worker.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable

import optuna
import psutil
from filelock import FileLock

from pipeline.errors import UserError
from pipeline.study import JOURNAL_PREFIX, SQLITE_PREFIX

logger = logging.getLogger(__name__)

WORKER_ATTR = "worker"
LOST_PREFIX = "lost_trial_"
RETRY_OF_ATTR = "retry_of"
_LOCK_TIMEOUT_S = 600

State = optuna.trial.TrialState


def worker_identity() -> str:
    """Return ``host:pid:start-time``, which stays unique when the system reuses a pid."""
    process = psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.2f}"


def _is_dead_local_worker(identity: str) -> bool:
    try:
        host, pid, started = identity.rsplit(":", 2)
        pid_number, start_time = int(pid), float(started)
    except ValueError:
        return False

    if host != socket.gethostname():
        return False

    try:
        process = psutil.Process(pid_number)
        if abs(process.create_time() - start_time) > 0.05:
            return True

        # A killed worker stays a zombie until its parent (a shell, the launcher) reaps it.
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def lost_trials(study: optuna.Study) -> dict[int, str]:
    """Return the lost trials' numbers and reasons."""
    return {
        int(key[len(LOST_PREFIX):]): reason
        for key, reason in study.user_attrs.items()
        if key.startswith(LOST_PREFIX)
    }


def used_budget(study: optuna.Study) -> int:
    """Count the trials that use the budget, running and waiting ones included."""
    lost = lost_trials(study)
    return sum(
        not (trial.state == State.FAIL and trial.number in lost)
        for trial in study.get_trials(deepcopy=False)
    )


def start_lock_path(storage_url: str) -> str | None:
    """Return the lock file beside a local storage file, or None for a database server."""
    # Not "<file>.lock": Optuna's journal file backend uses that name for its own lock.
    if storage_url.startswith(JOURNAL_PREFIX):
        return storage_url[len(JOURNAL_PREFIX):] + ".start-lock"

    if storage_url.startswith(SQLITE_PREFIX):
        return storage_url[len(SQLITE_PREFIX):] + ".start-lock"

    return None


class TrialGate:
    """A lock shared by all workers of a study, held from the budget check to the trial start.

    Checking the budget and creating the next trial must happen as one step, or several
    workers that see one free trial would all start one. ``study.optimize(n_trials=1)``
    creates the trial itself, so the objective calls ``release`` first thing. Local
    storages lock a file beside the storage file. PostgreSQL uses a session advisory
    lock keyed on the study name, which covers workers on every machine. Other database
    servers get no lock, so there the budget may be exceeded by up to one trial per
    extra worker.
    """

    def __init__(self, storage_url: str, study_name: str = "") -> None:
        self._file_lock = None
        self._engine = None
        self._connection = None
        self._key = f"pipeline:{study_name}"
        path = start_lock_path(storage_url)
        if path:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as error:
                raise UserError(
                    f"The folder of study.storage, {os.path.dirname(path)}, could not be created: {error}. "
                    f"Choose a path in a writable folder."
                ) from error
            self._file_lock = FileLock(path, timeout=_LOCK_TIMEOUT_S)
        elif storage_url.startswith("postgresql"):
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            self._engine = create_engine(storage_url, poolclass=NullPool)
        self._is_held = False

    def acquire(self) -> None:
        if self._is_held:
            return

        if self._file_lock is not None:
            self._file_lock.acquire()
        elif self._engine is not None:
            from sqlalchemy import text

            self._connection = self._engine.connect()
            self._connection.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": self._key})
        self._is_held = True

    def release(self) -> None:
        if not self._is_held:
            return

        if self._file_lock is not None:
            self._file_lock.release()
        elif self._connection is not None:
            from sqlalchemy import text

            self._connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": self._key})
            self._connection.close()
            self._connection = None
        self._is_held = False


def mark_lost(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    reason: str,
    retry: bool,
    close_run: Callable[[str, str], None],
) -> None:
    """Record a lost trial as such in Optuna and MLflow, and queue its rerun if asked."""
    study.set_user_attr(f"{LOST_PREFIX}{trial.number}", reason)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        close_run(run_id, reason)

    if retry and trial.params:
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        logger.info("trial %d queued again with the same parameters", trial.number)


def recover_dead_workers(study: optuna.Study, retry: bool, close_run: Callable[[str, str], None]) -> list[int]:
    """Fail the RUNNING trials whose worker process on this machine no longer exists.

    This works without heartbeats, so it also covers the journal storage, and it does
    not wait for the heartbeat grace period. Trials of workers on other machines are
    left to the heartbeat.
    """
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
        identity = trial.user_attrs.get(WORKER_ATTR)
        if not identity or not _is_dead_local_worker(identity):
            continue

        reason = f"worker {identity} stopped while the trial was running"
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            changed = study._storage.set_trial_state_values(trial._trial_id, state=State.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            changed = False
        if not changed:
            continue

        logger.warning("trial %d marked FAIL: %s", trial.number, reason)
        mark_lost(study, trial, reason, retry, close_run)
        recovered.append(trial.number)
    return recovered


def stale_trial_callback(retry: bool, close_run: Callable[[str, str], None]) -> Callable[[optuna.Study, Any], None]:
    """Return the heartbeat callback for trials Optuna marked FAIL after missed heartbeats."""

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = "the worker running this trial stopped sending heartbeats"
        logger.warning("trial %d marked FAIL: %s", trial.number, reason)
        mark_lost(study, trial, reason, retry, close_run)

    return on_stale
