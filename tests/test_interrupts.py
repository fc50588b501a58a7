"""The stop-signal handler: when it raises, when it waits, and what it leaves in a real SQLite storage."""

from __future__ import annotations

import os
import signal
import threading
import time

import optuna
import pytest

from pipeline.interrupts import Interrupted, StopSignals


@pytest.fixture
def signals():
    handler = StopSignals()
    handler.install()
    yield handler
    handler.restore()


def send(number: int) -> None:
    os.kill(os.getpid(), number)
    time.sleep(0.05)  # Python runs the handler at the next bytecode of the main thread.


def test_stop_signals_wait_outside_epochs(signals):
    send(signal.SIGINT)

    assert signals.pending == signal.SIGINT
    with pytest.raises(Interrupted) as raised:
        signals.raise_pending()
    assert raised.value.signal_number == signal.SIGINT
    assert signals.pending is None
    signals.raise_pending()


def test_stop_signals_raise_at_once_inside_epoch(signals):
    signals.interruptible = True

    with pytest.raises(Interrupted) as raised:
        send(signal.SIGTERM)

    assert raised.value.signal_number == signal.SIGTERM
    assert not signals.interruptible


def test_stop_signals_second_signal_raises_at_once(signals):
    send(signal.SIGINT)

    with pytest.raises(Interrupted):
        send(signal.SIGINT)
    assert signals.pending is None


def test_stop_signals_restore_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    handler = StopSignals()
    handler.install()
    assert signal.getsignal(signal.SIGTERM) != before
    handler.restore()

    assert signal.getsignal(signal.SIGTERM) == before


def test_stop_signals_leave_sqlite_storage_unlocked(tmp_path, signals):
    # A handler that raises at once can stop Optuna in the middle of a write. The database
    # then stays locked, so the write after the stop fails with "database is locked".
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path}/optuna.db", engine_kwargs={"connect_args": {"timeout": 1}}
    )
    trial = optuna.create_study(storage=storage, direction="maximize").ask()
    step = 0
    for round_number in range(20):
        timer = threading.Timer(0.005 + 0.002 * (round_number % 7), os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        stopped = False
        try:
            while True:
                trial.set_user_attr("step", step)
                trial.report(0.1, step)
                step += 1
                signals.raise_pending()
        except Interrupted:
            stopped = True
        assert stopped
        timer.join()

        trial.set_user_attr("stopped_in_round", round_number)

    assert trial.study.trials[0].user_attrs["stopped_in_round"] == 19
