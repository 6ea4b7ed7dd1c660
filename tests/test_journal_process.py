"""The journal as ``voxbridge serve`` and ``hypercorn -k trio voxbridge.asgi:app`` run it: opened
before the server listens, flushed and closed after the drain, and nothing acknowledged lost when
the process is killed.

"Acknowledged" is what another SQLite connection can read: committed. The SIGKILL test reads the
journal while the call is live, kills the server, starts it again on the same file and checks
that every line it had seen is still there and that the call is marked ``crashed``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_process import read_until

from voxbridge.errors import Reason
from voxbridge.journal import JournalError
from voxbridge.journal.reader import read_lines, recent_calls
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import FakeOpenAIRealtime, simulate_call

PYTHON = sys.executable
HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))
LISTENING = r"voxbridge listening on (http://127\.0\.0\.1:\d+)\n"


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Read with a connection of our own (query only: the server owns the file)."""
    with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True)) as connection:
        connection.execute("PRAGMA query_only = ON")
        return connection.execute(sql, args).fetchall()


@asynccontextmanager
async def started(
    argv: list[str], env: dict[str, str], *, stderr: int = subprocess.DEVNULL
) -> AsyncIterator[trio.Process]:
    """A subprocess, killed (if still running) and reaped on the way out."""
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=stderr, env=env)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


# --- in-process: serve() ------------------------------------------------------------------------


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[RunningServer, trio.Event]]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(
            lambda task_status: serve(settings, shutdown_trigger=stop.wait, task_status=task_status)
        )
        yield server, stop


async def test_serve_journals_to_the_default_db_and_closes_it_after_the_drain() -> None:
    db = Path("voxbridge.db")  # relative: the test's own directory (conftest), as for operators
    settings = Settings(port=0, drain_timeout=0.3, idle_timeout=30)
    with trio.fail_after(30):
        async with serving(settings) as (server, stop):
            journal = server.app.own_journal
            assert journal is not None and journal.is_open and journal.path == "voxbridge.db"
            result = await simulate_call(server.media_url, seconds=0.3)
            assert result.close_reason == "caller_stop"
            registry = server.app.registry
            while registry.find(result.call_sid) is None:  # accounted (and journaled) after close
                await registry.wait_changed()
            assert await trio.to_thread.run_sync(journal.flush, 5.0)
            assert query(db, "SELECT reason, status FROM calls") == [("caller_stop", "ended")]

            # a call still running at shutdown: the drain ends it, then the journal is closed
            async with trio.open_nursery() as calls:
                calls.start_soon(lambda: simulate_call(server.media_url, seconds=20))
                while len(server.app.registry) == 0:
                    await trio.sleep(0.01)
                stop.set()
        assert journal.closed
    got = sorted((row.reason, row.status) for row in recent_calls(db))
    assert got == [("caller_stop", "ended"), (Reason.SERVER_SHUTDOWN.value, "ended")]
    assert not os.path.exists("voxbridge.db-wal")  # noqa: ASYNC240  # closed cleanly: the WAL was checkpointed


async def test_a_cancelled_serve_still_journals_every_call_before_closing(tmp_path: Path) -> None:
    db = tmp_path / "cancelled.db"
    settings = Settings(port=0, db=str(db), idle_timeout=30)
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            server: RunningServer = await outer.start(serve, settings)
            outer.start_soon(lambda: simulate_call(server.media_url, seconds=20))
            while len(server.app.registry) == 0:
                await trio.sleep(0.01)
            outer.cancel_scope.cancel()  # the host goes away without a drain
    journal = server.app.own_journal
    assert journal is not None and journal.closed
    assert [(row.reason, row.status) for row in recent_calls(db)] == [
        (Reason.SERVER_SHUTDOWN.value, "ended")
    ]
    assert journal.statistics().refused == 0


async def test_serve_with_a_journal_that_cannot_be_opened_fails_before_listening(
    tmp_path: Path,
) -> None:
    settings = Settings(port=0, db=str(tmp_path / "no" / "such" / "dir" / "x.db"))
    with pytest.raises(JournalError, match="cannot open the journal"):
        await serve(settings)


async def test_the_cli_says_why_the_journal_cannot_be_opened(tmp_path: Path) -> None:
    bad = tmp_path / "missing" / "x.db"
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [PYTHON, "-m", "voxbridge", "serve", "--port", "0", "--db", str(bad)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    )
    assert done.returncode == 2
    assert "voxbridge: cannot open the journal" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# --- processes ----------------------------------------------------------------------------------


async def test_the_asgi_app_under_hypercorn_opens_and_closes_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "asgi.db"
    env = {**os.environ, "VOXBRIDGE_PROVIDER": "echo", "VOXBRIDGE_DB": str(db)}
    argv = [HYPERCORN, "-k", "trio", "--bind", "127.0.0.1:0", "voxbridge.asgi:app"]
    with trio.fail_after(40):
        async with started(argv, env, stderr=subprocess.STDOUT) as process:
            match = await read_until(process, r"Running on (http://127\.0\.0\.1:\d+)")
            url = match.group(1).replace("http", "ws") + "/twilio/media"
            result = await simulate_call(url, seconds=0.3)
            assert result.close_reason == "caller_stop"
            process.send_signal(signal.SIGINT)
            await process.wait()
    assert [(row.reason, row.status) for row in recent_calls(db)] == [("caller_stop", "ended")]
    assert not os.path.exists(f"{db}-wal")  # noqa: ASYNC240  # the lifespan's shutdown closed it


@pytest.mark.hang_limit(90)
async def test_sigkill_loses_no_acknowledged_transcript_line(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    said = [(0.2, "first thing I said"), (0.4, "second thing"), (0.6, "third thing")]
    fake = FakeOpenAIRealtime(caller_transcripts=said)
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "VOXBRIDGE_LOG_FORMAT": "json"}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            provider_url = await nursery.start(fake.serve)
            argv = [
                PYTHON,
                "-m",
                "voxbridge",
                "serve",
                "--port",
                "0",
                "--db",
                str(db),
                "--provider",
                "openai",
                "--provider-url",
                provider_url,
            ]
            async with started(argv, env) as first:
                url = (await read_until(first, LISTENING)).group(1)
                media = url.replace("http", "ws", 1) + "/twilio/media"
                nursery.start_soon(lambda: simulate_call(media, seconds=30, close_wait=10))
                # Acknowledged = committed = visible to this separate connection.
                with trio.fail_after(15):
                    while True:
                        seen = query(db, "SELECT call_id, seq, role, text FROM transcript")
                        if len(seen) == len(said):
                            break
                        await trio.sleep(0.02)
                live = query(db, "SELECT call_id, status FROM calls")
                first.kill()  # SIGKILL: no drain, no close, no flush
                await first.wait()
            assert first.returncode == -signal.SIGKILL
            assert [status for _, status in live] == ["live"]
            (call_id,) = {row[0] for row in seen}

            async with started(argv, env) as second:
                # the journal is open (crashed calls marked) before the server listens
                url = (await read_until(second, LISTENING)).group(1)
                rows = query(
                    db,
                    "SELECT status, crash_marked_at, ended_at FROM calls WHERE call_id = ?",
                    call_id,
                )
                survived = query(db, "SELECT call_id, seq, role, text FROM transcript")
                # (the signal handler is installed just after the line is printed: let it be)
                async with httpx.AsyncClient(timeout=5) as client:
                    assert (await client.get(f"{url}/readyz")).status_code == 200
                second.send_signal(signal.SIGTERM)
                with trio.fail_after(15):
                    await second.wait()
                assert second.returncode == 0
            nursery.cancel_scope.cancel()
    ((status, crash_marked_at, ended_at),) = rows
    assert (status, ended_at) == ("crashed", None)
    assert crash_marked_at is not None and crash_marked_at.endswith("Z")
    assert sorted(survived) == sorted(seen)
    assert [(ln.role, ln.text) for ln in read_lines(db, call_id)] == [
        ("caller", text) for _, text in said
    ]
