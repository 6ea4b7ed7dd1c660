"""Shared fixtures: a bridge wired to the echo agent over in-memory WebSockets.

Testing charter (after trio-websocket's): every test that waits on I/O runs on trio's autojump clock
or under a real-time budget, so a hang fails fast instead of hanging CI; deadlines are asserted to the
virtual millisecond; real sockets are exercised in ``test_e2e_*`` on loopback only.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from voxbridge.metrics import Metrics
from voxbridge.testing import EchoAgent

# Every test gets a wall-clock limit that a shielded hang cannot defeat: see tests/hang_guard.py.
pytest_plugins = ["hang_guard"]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def agent() -> EchoAgent:
    return EchoAgent(delay=0.1)


@pytest.fixture(autouse=True)
def _collect_garbage_per_test() -> Iterator[None]:
    """Collect after each test so a leaked socket's ResourceWarning names the test that leaked it."""
    yield
    gc.collect()
