"""StopSignals: SIGTERM and SIGINT recorded without a lock, for the main thread to act on."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from tidings.cli.signals import StopSignals


@pytest.fixture
def signals() -> Iterator[StopSignals]:
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    stop = StopSignals()
    stop.install()
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_signal_arriving_while_the_main_thread_holds_an_events_lock_is_recorded(
    signals: StopSignals,
) -> None:
    """What the relay command used to deadlock on: its handler set an Event (the relay's stop,
    its doorbell) whose lock the main thread could be holding when the signal came."""
    doorbell = threading.Event()
    with doorbell._cond:  # type: ignore[attr-defined]  # as inside Event.wait, for a moment
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, in this thread
    assert signals.received == [signal.SIGTERM]


def test_wait_returns_once_a_signal_is_recorded(signals: StopSignals) -> None:
    worker = threading.Thread(target=threading.Event().wait, args=(30,), daemon=True)
    worker.start()
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
    signals.wait(worker)  # returns: no KeyboardInterrupt, the signal is only recorded
    assert signals.received == [signal.SIGINT]
    assert worker.is_alive()


def test_wait_returns_when_the_worker_ends_without_a_signal(signals: StopSignals) -> None:
    worker = threading.Thread(target=lambda: None)
    worker.start()
    signals.wait(worker)
    assert signals.received == []


def test_wait_without_a_worker_returns_once_a_signal_is_recorded(signals: StopSignals) -> None:
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
    signals.wait()
    assert signals.received == [signal.SIGTERM]
