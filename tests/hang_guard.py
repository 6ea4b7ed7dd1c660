"""A suite-wide hang guard: a test that outlives its wall-clock limit fails and shows where it hung.

Why not ``trio.fail_after`` or ``faulthandler_timeout``? ``fail_after`` works by cancellation, and one
``with trio.CancelScope(shield=True): await trio.sleep_forever()`` in the code under test defeats it:
under the autojump clock trio then sits in ``epoll`` with no deadline at all, and CI hangs.
``faulthandler_timeout`` prints thread stacks -- in a trio test, just the event loop's -- and fails
nothing. This pytest plugin (``pytest_plugins = ["hang_guard"]`` in conftest) gives every test a
wall-clock limit, ``DEFAULT_LIMIT`` or ``@pytest.mark.hang_limit(seconds)``, covering setup, call
and teardown, and watched by a thread, so it fires however blocked the loop is or however far
virtual time has run. When the limit passes:

1. **A trio test body** (wrapped so the guard knows its trio token, task and a cancel scope around
   it): the watcher calls ``token.run_sync_soon``, and inside the loop the callback writes the task
   tree -- every task from ``current_root_task()`` with the frames it is awaiting in -- to stderr,
   cancels the test, then throws :class:`HangGuardTimeout` into every task of the test still
   blocked, i.e. blocked under a shield. The test fails with a traceback at the hang and the
   session goes on. (Raising from the callback would not do: trio re-raises it in a system task,
   which cancels the whole run on its way to a ``TrioInternalError`` -- a cancellation the shield
   ignores too, so the run never ends. Throwing uses trio's private ``Task._attempt_abort``: how
   trio delivers ``Cancelled``, minus the shield check.) The throw is repeated every ``REPEAT``
   seconds, for a loop that was running rather than blocked.
2. **Anything else** -- a sync test, a hang in an async fixture, a trio task looping without a
   checkpoint -- or step 1 did not end the test within the grace period: all thread stacks are
   dumped and SIGALRM is sent to the main thread. Its handler raises :class:`HangGuardTimeout`
   where the thread is, unless that is trio's own code (raising there would wreck the run), in
   which case it does step 1 from inside the loop for *every* blocked task. Either way the test
   fails and later tests run. (``_thread.interrupt_main`` would raise ``KeyboardInterrupt``, which
   stops the session.)
3. **Still running** a grace period later (it swallowed the exception): stacks are dumped again and
   the process exits with status 1, so CI fails fast instead of hanging.

The grace period is ``min(GRACE, limit)``. Reports go to the terminal's stderr (a dup taken while
capture is off, as pytest's faulthandler plugin does), so they are seen even if the process exits.

Under pytest-xdist (``just test`` runs the suite in workers) each worker is a process running its
tests in its main thread, so the guard works there unchanged: its reports go to the worker's
stderr, which is the controller's, and step 3 ends only that worker, which the controller reports
as a crash of the test it was running (a failure) before starting a replacement.
"""

from __future__ import annotations

import faulthandler
import functools
import inspect
import itertools
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from typing import Any

import pytest
import trio

DEFAULT_LIMIT = 60.0  # wall seconds per test
GRACE = 5.0  # wall seconds to unwind before escalating
REPEAT = 0.1  # wall seconds between throws into a trio test that is still blocked

_stderr_fd = 2  # a dup of the terminal's stderr from pytest_configure on
_current: HangGuard | None = None  # the running test's guard
_TRIO_CORE = os.path.join("trio", "_core", "")


class HangGuardTimeout(Exception):
    """The test outlived its hang limit."""


def _write(text: str) -> None:
    os.write(_stderr_fd, text.encode("utf-8", "replace"))


def format_task_tree(task: trio.lowlevel.Task, depth: int = 0) -> Iterator[str]:
    """One line per task (indented under its parent) and one per frame it is awaiting in."""
    pad = "    " * depth
    yield f"{pad}task {task.name}"
    for frame, lineno in task.iter_await_frames():
        if _TRIO_CORE not in frame.f_code.co_filename:  # the run loop's own frames are noise
            yield f"{pad}  {frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}"
    for nursery in task.child_nurseries:
        for child in sorted(nursery.child_tasks, key=lambda t: t.name):
            yield from format_task_tree(child, depth + 1)


def _subtree(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _subtree(child)


class HangGuard:
    """Arms a watcher thread for one test; a context manager, entered in the main thread."""

    def __init__(self, nodeid: str, limit: float) -> None:
        self.nodeid, self.limit, self.grace = nodeid, limit, min(GRACE, limit)
        self.expired = False
        # Set by the trio test wrapper, inside the loop:
        self.token: trio.lowlevel.TrioToken | None = None
        self.task: trio.lowlevel.Task | None = None
        self.scope: trio.CancelScope | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()  # no SIGALRM once __exit__ has begun
        self._watcher = threading.Thread(
            target=self._watch, name=f"hang-guard {nodeid}", daemon=True
        )

    def __enter__(self) -> HangGuard:
        self._old_handler = signal.signal(signal.SIGALRM, self._on_sigalrm)
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done.set()
        self._watcher.join()
        signal.signal(signal.SIGALRM, self._old_handler)

    def message(self) -> str:
        return f"{self.nodeid} outlived its hang limit of {self.limit:g} s"

    # --- in the watcher thread ----------------------------------------------------------------

    def _watch(self) -> None:
        if self._done.wait(self.limit):
            return
        self.expired = True
        if self._post(self._expire_test):  # step 1
            for _ in range(round(self.grace / REPEAT)):
                if self._done.wait(REPEAT):
                    return
                self._post(self._throw_into_test)
        _write(f"\n+++ hang guard: {self.message()}; thread stacks:\n")  # step 2
        faulthandler.dump_traceback(_stderr_fd, all_threads=True)
        with self._lock:
            if self._done.is_set():
                return
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)
        if self._done.wait(self.grace):
            return
        _write(f"\n+++ hang guard: {self.nodeid} did not unwind; exiting. Thread stacks:\n")
        faulthandler.dump_traceback(_stderr_fd, all_threads=True)  # step 3
        os._exit(1)

    def _post(self, callback: Callable[[], object]) -> bool:
        if self.token is None:
            return False
        try:
            self.token.run_sync_soon(callback)
        except trio.RunFinishedError:
            return False
        return True

    # --- in the main thread -------------------------------------------------------------------

    def _on_sigalrm(self, signum: int, frame: object) -> None:
        if self._done.is_set():
            return
        if trio.lowlevel.in_trio_run() and trio.lowlevel.currently_ki_protected():
            trio.lowlevel.current_trio_token().run_sync_soon(self._expire_run)
        else:
            raise HangGuardTimeout(self.message())

    def _expire_test(self) -> None:
        self._report_task_tree()
        if self.scope is not None:
            self.scope.cancel()  # unwinds all that no shield protects
        self._throw_into_test()

    def _throw_into_test(self) -> None:
        if self.task is not None:
            self._throw_into_blocked(_subtree(self.task))

    def _expire_run(self) -> None:
        self._report_task_tree()
        root = trio.lowlevel.current_root_task()
        if root is not None:  # spare trio's init task: failing it is a TrioInternalError
            self._throw_into_blocked(itertools.islice(_subtree(root), 1, None))

    def _report_task_tree(self) -> None:
        root = trio.lowlevel.current_root_task()
        tree = "\n".join(format_task_tree(root)) if root else "(none)"
        _write(f"\n+++ hang guard: {self.message()}; task tree:\n{tree}\n")

    def _throw_into_blocked(self, tasks: Iterable[trio.lowlevel.Task]) -> None:
        def raise_timeout() -> None:
            raise HangGuardTimeout(self.message())

        for task in tasks:
            # Private: after a cancel(), a task still waiting to be aborted is under a shield.
            if getattr(task, "_abort_func", None) is not None:
                task._attempt_abort(raise_timeout)


def _guard_trio_test(test_fn: Callable[..., Awaitable[object]]) -> Callable[..., Awaitable[object]]:
    @functools.wraps(test_fn)
    async def guarded(**kwargs: Any) -> object:
        guard = _current
        if guard is None:
            return await test_fn(**kwargs)
        with trio.CancelScope() as guard.scope:
            guard.token = trio.lowlevel.current_trio_token()
            guard.task = trio.lowlevel.current_task()
            result = await test_fn(**kwargs)
        if guard.expired:
            raise HangGuardTimeout(guard.message())
        return result

    return guarded


# --- pytest hooks -----------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    global _stderr_fd
    config.addinivalue_line(
        "markers",
        f"hang_limit(seconds): fail the test if it takes longer than this many wall seconds "
        f"(default {DEFAULT_LIMIT:g}); see tests/hang_guard.py",
    )
    _stderr_fd = os.dup(2)  # capture is suspended during configure: this is the terminal


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stderr_fd
    if _stderr_fd != 2:
        os.close(_stderr_fd)
        _stderr_fd = 2


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    global _current
    marker = item.get_closest_marker("hang_limit")
    limit = float(marker.args[0]) if marker else DEFAULT_LIMIT
    with HangGuard(item.nodeid, limit) as _current:
        try:
            return (yield)
        finally:
            _current = None


@pytest.hookimpl(wrapper=True, tryfirst=True)  # before pytest-trio puts item.obj in trio.run
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    # A Hypothesis test's item.obj is sync, so such a test gets step 2 only.
    trio_test = isinstance(item, pytest.Function) and item.get_closest_marker("trio") is not None
    if trio_test and inspect.iscoroutinefunction(item.obj):
        item.obj = _guard_trio_test(item.obj)
    return (yield)
