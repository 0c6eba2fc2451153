"""The broker contract, run against every adapter on the real servers."""

from __future__ import annotations

from tidings.testing.broker_contract import BrokerContract


class TestBrokerContract(BrokerContract):
    pass
