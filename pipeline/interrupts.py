"""SIGINT and SIGTERM, turned into an exception only where no storage write can be cut short.

A signal handler that raises at once can stop the main thread half-way through an
Optuna or MLflow write on SQLite. The interrupted transaction then keeps the database
locked, and the writes that record the lost trial fail with "database is locked". So
the handler raises at once only while Keras trains an epoch, when the main thread
writes nothing. At other times it remembers the signal, and ``raise_pending`` raises it
at the next safe point: the start or end of an epoch, or between trials. A second
signal raises at once, for a user who does not want to wait.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so the running trial ends cleanly."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class StopSignals:
    """The handler of SIGINT and SIGTERM from ``install`` to ``restore``, as the module docstring describes."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.interruptible = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def raise_pending(self) -> None:
        """Raise ``Interrupted`` for a signal that arrived while raising was unsafe."""
        if self.pending is None:
            return

        number, self.pending = self.pending, None
        self.interruptible = False
        raise Interrupted(number)

    def _handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self.interruptible or self.pending is not None:
            self.pending = None
            self.interruptible = False
            raise Interrupted(signal_number)

        self.pending = signal_number
        logger.warning(
            "%s received; stopping after the current storage write (send it again to stop at once)",
            signal.Signals(signal_number).name,
        )
