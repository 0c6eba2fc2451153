"""Sagas (process managers): durable state keyed by correlation, commands, compensation, and
durable timeouts.

* :mod:`~tidings.sagas.definition`: how a saga is declared (``Saga``, ``@starts``, ``@handles``,
  ``@on_timeout``).
* :mod:`~tidings.sagas.runtime`: what handling one message decides, with no I/O.
* :mod:`~tidings.sagas.sql`: state, dedup records and timeouts in SQL, in the caller's
  transaction.
"""

from tidings.sagas.definition import Saga, handles, on_timeout, starts
from tidings.sagas.runtime import SagaOutcome, ScheduledTimeout, StoredSaga, run_saga

__all__ = [
    "Saga",
    "SagaOutcome",
    "ScheduledTimeout",
    "StoredSaga",
    "handles",
    "on_timeout",
    "run_saga",
    "starts",
]
