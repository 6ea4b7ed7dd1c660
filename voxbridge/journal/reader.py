"""Reading a SQLite journal (``voxbridge calls``, ``voxbridge transcript``, tests, scripts).

Readers never create a journal by mistake (a missing file is a :class:`JournalError`) and never
write one (``PRAGMA query_only``); in WAL mode they never block the server's writer and see every
committed record (see :mod:`voxbridge.journal.sqlite` for the schema and the timestamp format).
The file is opened ``mode=rw`` (SQLite falls back to read-only for a write-protected file) rather
than ``mode=ro``: a read-only connection that is the last to close leaves the ``-wal`` and
``-shm`` files behind.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from .sqlite import JournalError

__all__ = ["JournaledCall", "JournaledLine", "find_calls", "read_lines", "recent_calls"]

_CALL_COLUMNS = (
    "call_id, call_sid, stream_sid, carrier, provider, status, started_at, ended_at, "
    "crash_marked_at, duration_s, reason, detail, close_code, upstream_opened, frames_from_caller, "
    "frames_to_caller, bytes_from_caller, bytes_to_caller, resumes, barge_ins, custom_parameters"
)


@attrs.frozen
class JournaledCall:
    """One row of the ``calls`` table (timestamps as stored: ISO 8601 UTC text)."""

    call_id: str
    call_sid: str | None
    stream_sid: str | None
    carrier: str
    provider: str
    status: str  # live, ended, crashed
    started_at: str
    ended_at: str | None
    crash_marked_at: str | None
    duration_s: float | None
    reason: str | None
    detail: str | None
    close_code: int | None
    upstream_opened: bool | None
    frames_from_caller: int
    frames_to_caller: int
    bytes_from_caller: int
    bytes_to_caller: int
    resumes: int
    barge_ins: int
    custom_parameters: dict[str, str]


@attrs.frozen
class JournaledLine:
    """One row of the ``transcript`` table."""

    seq: int
    role: str
    text: str
    at: str


@contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    file = Path(path)
    if os.fspath(path) == ":memory:" or not file.is_file():
        raise JournalError(f"no journal at {os.fspath(path)!r}")
    try:
        connection = sqlite3.connect(f"{file.resolve().as_uri()}?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {os.fspath(path)!r}: {exc}") from None
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("PRAGMA query_only = ON")
        yield connection
    except sqlite3.Error as exc:
        raise JournalError(
            f"{os.fspath(path)!r} is not a readable voxbridge journal: {exc}"
        ) from None
    finally:
        connection.close()


def _call(row: sqlite3.Row) -> JournaledCall:
    values = dict(row)
    try:
        parameters = json.loads(values["custom_parameters"])
    except (TypeError, ValueError):
        parameters = None
    values["custom_parameters"] = parameters if isinstance(parameters, dict) else {}
    opened = values["upstream_opened"]
    values["upstream_opened"] = None if opened is None else bool(opened)
    return JournaledCall(**values)


def recent_calls(path: str | os.PathLike[str], *, limit: int = 20) -> list[JournaledCall]:
    """The ``limit`` most recently started calls, newest first.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal.
    """
    with _reading(path) as db:
        rows = db.execute(
            f"SELECT {_CALL_COLUMNS} FROM calls ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (limit,),
        ).fetchall()
    return [_call(row) for row in rows]


def find_calls(path: str | os.PathLike[str], call: str) -> list[JournaledCall]:
    """The calls whose CallSid is ``call`` (oldest first; a carrier may reuse one for several
    streams), or else the call whose voxbridge call id is ``call``.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal.
    """
    with _reading(path) as db:
        rows = db.execute(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_sid = ? ORDER BY started_at, rowid",
            (call,),
        ).fetchall()
        if not rows:
            rows = db.execute(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?", (call,)
            ).fetchall()
    return [_call(row) for row in rows]


def read_lines(path: str | os.PathLike[str], call_id: str) -> list[JournaledLine]:
    """The transcript of the call ``call_id`` (voxbridge's id), in order.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal.
    """
    with _reading(path) as db:
        rows = db.execute(
            "SELECT seq, role, text, at FROM transcript WHERE call_id = ? ORDER BY seq",
            (call_id,),
        ).fetchall()
    return [JournaledLine(**dict(row)) for row in rows]
