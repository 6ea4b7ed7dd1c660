"""The hang guard (``tests/hang_guard.py``) fails a hung test even when a shield blocks cancellation.

Each hang is run in a *child* pytest with a 1-second ``hang_limit``, so if the guard ever fails to
stop one, only the child hangs, and ``subprocess.run(timeout=...)`` kills it and fails this test.
Every child runs twice: in one process, and in pytest-xdist workers as ``just test`` runs the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import hang_guard
import pytest
import trio

CHILD_INI = """\
[pytest]
trio_mode = true
addopts = --strict-markers --strict-config -p hang_guard -p no:cacheprovider -rA
filterwarnings = error
"""

HANGS = """\
import time

import pytest
import trio


async def wedged_helper():
    with trio.CancelScope(shield=True):
        await trio.sleep_forever()


@pytest.mark.hang_limit(1)
async def test_shielded_sleep_forever(autojump_clock):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wedged_helper, name="wedged-helper")
        with trio.fail_after(5):  # what the rig does today; the shield defeats it
            with trio.CancelScope(shield=True):
                await trio.sleep_forever()


@pytest.mark.hang_limit(1)
async def test_virtual_time_loop(autojump_clock):
    with trio.fail_after(5), trio.CancelScope(shield=True):
        while True:
            await trio.sleep(1)


@pytest.mark.hang_limit(1)
async def test_loop_without_checkpoints():
    while True:
        pass


@pytest.mark.hang_limit(1)
def test_sync_sleep_loop():
    while True:
        time.sleep(0.05)


@pytest.fixture
async def wedged_fixture():
    with trio.CancelScope(shield=True):
        await trio.sleep_forever()
    yield


@pytest.mark.hang_limit(1)
async def test_async_fixture_hangs(autojump_clock, wedged_fixture):
    pass


async def test_async_after_the_hangs():
    await trio.sleep(0)


def test_sync_after_the_hangs():
    pass
"""

SWALLOWS = """\
import time

import pytest


@pytest.mark.hang_limit(1)
def test_swallows_the_timeout():
    while True:
        try:
            time.sleep(0.05)
        except BaseException:
            pass
"""


# How the child runs its tests: in one process, or as the suite runs under ``just test``, in
# pytest-xdist workers (where the guard's thread, SIGALRM and its stderr must work the same).
WORKERS = {"serial": [], "xdist": ["-p", "xdist", "--numprocesses=2", "--dist=worksteal"]}


def run_child(
    directory: Path, source: str, workers: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    (directory / "pytest.ini").write_text(CHILD_INI)
    (directory / "test_hangs.py").write_text(source)
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-m", "pytest", *WORKERS[workers], "test_hangs.py"],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return child, time.monotonic() - started


@pytest.fixture(scope="module", params=sorted(WORKERS))
def hung(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    child, elapsed = run_child(tmp_path_factory.mktemp("hangs"), HANGS, request.param)
    assert elapsed < 30, child.stdout + child.stderr
    return child


def test_every_hang_fails_and_later_tests_still_run(hung: subprocess.CompletedProcess[str]) -> None:
    assert hung.returncode == 1, hung.stdout + hung.stderr
    for name in (
        "test_shielded_sleep_forever",
        "test_virtual_time_loop",
        "test_loop_without_checkpoints",
        "test_sync_sleep_loop",
        "test_async_fixture_hangs",
    ):
        assert f"FAILED test_hangs.py::{name} - " in hung.stdout
        assert f"test_hangs.py::{name} outlived its hang limit of 1 s" in hung.stdout
    assert "PASSED test_hangs.py::test_async_after_the_hangs" in hung.stdout
    assert "PASSED test_hangs.py::test_sync_after_the_hangs" in hung.stdout
    assert "5 failed, 2 passed" in hung.stdout


def test_a_shielded_hang_prints_the_task_tree(hung: subprocess.CompletedProcess[str]) -> None:
    report = hung.stderr.split("+++ hang guard: test_hangs.py::test_shielded_sleep_forever")[1]
    tree = report.split("+++")[0]
    assert "task tree:" in tree
    assert "task <test 'test_shielded_sleep_forever'>" in tree
    assert "task wedged-helper" in tree
    assert "test_hangs.py:9 in wedged_helper" in tree  # the line it is stuck on
    assert "test_hangs.py:18 in test_shielded_sleep_forever" in tree


def test_a_virtual_time_loop_prints_the_task_tree(hung: subprocess.CompletedProcess[str]) -> None:
    report = hung.stderr.split("+++ hang guard: test_hangs.py::test_virtual_time_loop")[1]
    assert "in test_virtual_time_loop" in report.split("+++")[0]


def test_a_sync_hang_prints_the_thread_stacks(hung: subprocess.CompletedProcess[str]) -> None:
    report = hung.stderr.split("+++ hang guard: test_hangs.py::test_sync_sleep_loop")[1]
    assert "thread stacks:" in report
    assert "in test_sync_sleep_loop" in report


def test_a_hang_in_an_async_fixture_prints_the_task_tree(
    hung: subprocess.CompletedProcess[str],
) -> None:
    report = hung.stderr.split("+++ hang guard: test_hangs.py::test_async_fixture_hangs")[1:]
    assert "task tree:" in "".join(report)  # found via SIGALRM: the test body never started
    assert "in wedged_fixture" in "".join(report)


@pytest.mark.parametrize("workers", sorted(WORKERS))
def test_a_test_that_swallows_the_timeout_ends_the_process(tmp_path: Path, workers: str) -> None:
    """In an xdist worker the guard's exit is a crashed worker: the run still fails."""
    child, elapsed = run_child(tmp_path, SWALLOWS, workers)
    assert child.returncode == 1, child.stdout + child.stderr
    assert elapsed < 30
    assert "test_hangs.py::test_swallows_the_timeout did not unwind; exiting" in child.stderr
    assert "in test_swallows_the_timeout" in child.stderr
    if workers == "xdist":  # the controller names the test whose worker the guard ended
        assert "crashed while running 'test_hangs.py::test_swallows_the_timeout'" in child.stdout


# --- in this process --------------------------------------------------------------------------


def test_only_this_tests_watcher_thread_is_alive(request: pytest.FixtureRequest) -> None:
    watchers = [t.name for t in threading.enumerate() if t.name.startswith("hang-guard ")]
    assert watchers == [f"hang-guard {request.node.nodeid}"]


async def test_a_trio_test_is_attached_to_its_guard() -> None:
    guard = hang_guard._current
    assert guard is not None
    assert guard.token is trio.lowlevel.current_trio_token()
    assert guard.limit == hang_guard.DEFAULT_LIMIT


@pytest.mark.hang_limit(7)
def test_the_marker_sets_the_limit() -> None:
    assert hang_guard._current is not None
    assert hang_guard._current.limit == 7
