"""Stopping a long-running command on SIGTERM or SIGINT without a lock in the handler.

Python runs a signal handler in the main thread between two of its bytecodes, whatever that
thread holds at that moment. A handler that takes a lock (setting a ``threading.Event`` does,
and stopping a relay sets two) waits for ever if the main thread was holding that lock when
the signal came, for instance inside the relay's own wait for its doorbell, and the process then
ignores SIGTERM until it is killed. So :class:`StopSignals` only records the signal (appending to
a list takes no lock), and the main thread, which does nothing but wait while the work runs in
other threads, looks for it a few times a second.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

#: Seconds between two looks for a recorded signal (how long a stop may wait to begin).
POLL = 0.1


class StopSignals:
    """SIGTERM and SIGINT, recorded for the main thread to act on (see the module docstring)."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self) -> None:
        """Handle SIGTERM and SIGINT from now on (call it from the main thread)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.record)

    def record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    def wait(self, worker: threading.Thread | None = None) -> None:
        """Return once a signal was recorded, or ``worker`` (if given) ended: it then needs no
        stopping."""
        while not self.received and (worker is None or worker.is_alive()):
            time.sleep(POLL)
