"""Tests for the trial objective's callbacks: pruning and stop signals."""

from __future__ import annotations

import signal

import optuna
import pytest

from pipeline.interrupts import Interrupted, StopSignals
from pipeline.objective import InterruptibleEpochs, PruneBeforeLastEpoch


def study_with_finished_trials(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    for value in values:
        trial = study.ask()
        trial.report(value, 0)
        trial.report(value, 1)
        study.tell(trial, value)
    return study


def test_pruning_callback_prunes_early_epoch():
    study = study_with_finished_trials([0.6, 0.7])
    callback = PruneBeforeLastEpoch(study.ask(), "val_accuracy", epochs=2)

    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(0, {"val_accuracy": 0.1})


def test_pruning_callback_keeps_last_epoch():
    study = study_with_finished_trials([0.6, 0.7])
    trial = study.ask()
    callback = PruneBeforeLastEpoch(trial, "val_accuracy", epochs=1)

    callback.on_epoch_end(0, {"val_accuracy": 0.1})

    assert study.trials[-1].intermediate_values == {0: 0.1}


def test_interruptible_epochs_raise_pending_signal_at_epoch_start():
    signals = StopSignals()
    callback = InterruptibleEpochs(signals)
    callback.on_epoch_begin(0)
    assert signals.interruptible
    callback.on_epoch_end(0)
    assert not signals.interruptible
    signals.pending = signal.SIGTERM

    with pytest.raises(Interrupted):
        callback.on_epoch_begin(1)

    assert not signals.interruptible
