"""Shared fixtures: a bridge wired to the echo agent over in-memory WebSockets.

Testing charter (after trio-websocket's): every test that waits on I/O runs on trio's autojump clock
or under a real-time budget, so a hang fails fast instead of hanging CI; deadlines are asserted to the
virtual millisecond; real sockets are exercised in ``test_e2e_*`` on loopback only.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from voxbridge.metrics import Metrics
from voxbridge.testing import FakeEchoAgent

# Every test gets a wall-clock limit that a shielded hang cannot defeat: see tests/hang_guard.py.
pytest_plugins = ["hang_guard"]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def agent() -> FakeEchoAgent:
    return FakeEchoAgent(delay=0.1)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own empty directory, so the servers tests start (in-process with
    ``Settings(port=0)``, or as subprocesses, which inherit the directory) write their journal, the
    default ``--db voxbridge.db`` relative path, there and never into the checkout."""
    monkeypatch.chdir(tmp_path)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection left (every module imported, every test and parameter: half a
    million objects), so the collection after each test scans only what tests made since. It took
    about 0.35 s per test, most of the suite's time; after this, milliseconds. What is frozen lives
    until the process ends, as it would anyway: modules, classes, fixtures' functions."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_per_test() -> Iterator[None]:
    """Collect after each test so a leaked socket's ResourceWarning names the test that leaked it.
    Objects frozen after collection are not scanned (see ``pytest_collection_finish``); a socket
    a test leaks is the test's own, so it is collected here, and warns, as before."""
    yield
    gc.collect()
