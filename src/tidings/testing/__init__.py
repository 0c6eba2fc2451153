"""Test support shipped with tidings: in-memory harnesses, given/when/then helpers, and the
contract suites that every store and broker (including third-party ones) must pass."""
