"""The tidings reference application: order management, end to end.

Layout (the architecture is visible in the folders):

* ``domain/``: aggregates, events, a domain service. Pure Python: no I/O, no SQLAlchemy.
* ``handlers.py``: who reacts to what, and when (in transaction / after commit).
* ``sagas.py``: the order fulfilment process manager (compensation, timeouts).
* ``bootstrap.py``: wiring: stores, units of work, relay, bus. Tests use it too.
* ``api.py``: the HTTP API (FastAPI).
* ``scenario.py``: the end-to-end demo run by ``make demo``.
"""
