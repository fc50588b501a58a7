"""Timers that benchmarks attach to pipeline functions and to ``model.fit`` from outside.

The pipeline's code is not changed: ``Stopwatch.wrap`` replaces a function or method
on its module or class for the rest of the child process.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import defaultdict
from typing import Any, Callable


class Stopwatch:
    """Seconds and call counts per (segment, label), counted on the main thread only.

    The segment names the part of a run (``setup``, ``trial-0``, ...) that a caller sets.
    Times are inclusive, so a wrapped function that calls another wrapped function counts
    that time under both labels. A call nested in a call under the same label counts once. Calls from other threads, such as Optuna's heartbeat,
    are not on the training path and are skipped.
    """

    def __init__(self) -> None:
        self.segment = "setup"
        self._active: set[str] = set()
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, label: str, seconds: float) -> None:
        self.seconds[(self.segment, label)] += seconds
        self.calls[(self.segment, label)] += 1

    def timed(self, function: Callable, label: str) -> Callable:
        """Return ``function`` wrapped so that each main-thread call adds its wall time to ``label``."""

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # A nested call under the same label is already inside the outer call's time.
            if threading.current_thread() is not threading.main_thread() or label in self._active:
                return function(*args, **kwargs)

            self._active.add(label)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._active.discard(label)
                self.add(label, time.perf_counter() - started)

        return wrapper

    def wrap(self, owner: Any, attribute: str, label: str | None = None) -> None:
        """Replace ``owner.attribute`` (a module function or a method) with its timed version."""
        original = inspect.getattr_static(owner, attribute)
        if isinstance(original, (staticmethod, classmethod)):
            raise TypeError(f"{owner!r}.{attribute} is a {type(original).__name__}, which wrap does not handle")
        setattr(owner, attribute, self.timed(getattr(owner, attribute), label or attribute))

    def table(self) -> dict[str, dict[str, list[float]]]:
        """Return ``{segment: {label: [seconds, calls]}}`` for a JSON result."""
        table: dict[str, dict[str, list[float]]] = defaultdict(dict)
        for (segment, label), seconds in self.seconds.items():
            table[segment][label] = [seconds, self.calls[(segment, label)]]
        return dict(table)


def make_epoch_timer() -> Any:
    """Return a Keras callback that records each epoch's training and validation wall time.

    Put it first in the callback list: Keras calls ``on_epoch_end`` in list order, so
    the later callbacks' own time (logging, pruning) is not counted in the epoch.
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, float]] = []
            self._begin: float | None = None
            self._validation_begin: float | None = None

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._begin = time.perf_counter()
            self._validation_begin = None

        def on_test_begin(self, logs: dict | None = None) -> None:
            if self._begin is not None:
                self._validation_begin = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            end = time.perf_counter()
            validation_begin = self._validation_begin or end
            self.epochs.append(
                {"train_s": validation_begin - self._begin, "val_s": end - validation_begin, "total_s": end - self._begin}
            )
            self._begin = None

    return EpochTimer()


def make_first_step_callback(on_first_step: Callable[[float, float], None]) -> Any:
    """Return a Keras callback that calls ``on_first_step(begin, end)`` with the wall-clock times of batch 0.

    Keras calls batch hooks on every step once any callback defines them, so use this
    callback only where the run ends after the first step.
    """
    import keras

    class FirstStep(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._begin: float | None = None

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if self._begin is None:
                self._begin = time.time()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            on_first_step(self._begin, time.time())

    return FirstStep()


def prepend_fit_callback(training_module: Any, make_callback: Callable[[], Any], on_finish: Callable[[Any], None] | None = None) -> None:
    """Make ``pipeline.training.fit`` put a new callback from ``make_callback`` first in every call.

    ``on_finish(callback)`` runs after each ``fit`` returns or raises, so a caller can
    collect what the callback recorded, pruned trials included.
    """
    original = training_module.fit
    signature = inspect.signature(original)

    @functools.wraps(original)
    def fit(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        callback = make_callback()
        bound.arguments["callbacks"] = [callback, *bound.arguments["callbacks"]]
        try:
            return original(*bound.args, **bound.kwargs)
        finally:
            if on_finish is not None:
                on_finish(callback)

    training_module.fit = fit
