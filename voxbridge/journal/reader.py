"""Reading a SQLite journal (``voxbridge calls``, ``voxbridge transcript``, tests, scripts).

Readers never create a journal by mistake (a missing file is a :class:`JournalError`) and never
write one (``PRAGMA query_only``); in WAL mode they never block the server's writer and see every
committed record (see :mod:`voxbridge.journal.sqlite` for the schema and the timestamp format).
The file is opened ``mode=rw`` (SQLite falls back to read-only for a write-protected file) rather
than ``mode=ro``: a read-only connection that is the last to close leaves the ``-wal`` and
``-shm`` files behind.

A journal an older voxbridge wrote (schema version 1) is read as it is, never migrated: the columns
it lacks read as the migration would fill them (``agent`` ``None``, ``usage`` ``{}``, counts 0,
``tool`` ``None``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from ..providers.events import ToolExchange
from .sqlite import JournalError

__all__ = ["JournaledCall", "JournaledLine", "find_calls", "read_lines", "recent_calls"]

_CALL_COLUMNS = (
    "call_id",
    "call_sid",
    "stream_sid",
    "carrier",
    "provider",
    "status",
    "started_at",
    "ended_at",
    "crash_marked_at",
    "duration_s",
    "reason",
    "detail",
    "close_code",
    "upstream_opened",
    "frames_from_caller",
    "frames_to_caller",
    "bytes_from_caller",
    "bytes_to_caller",
    "resumes",
    "barge_ins",
    "custom_parameters",
    "agent",
    "usage",
    "tool_calls",
    "dtmf_digits",
)
_LINE_COLUMNS = ("seq", "role", "text", "at", "tool")
_EXCHANGE = tuple(field.name for field in attrs.fields(ToolExchange))  # the JSON's keys, in order
# What a column added by a migration reads as in a journal not migrated yet (schema version 1).
_ADDED = {"agent": "NULL", "usage": "'{}'", "tool_calls": "0", "dtmf_digits": "0", "tool": "NULL"}


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
    agent: str | None = None  # None: written by a voxbridge that did not journal agents
    usage: dict[str, float] = attrs.field(factory=dict)  # kind -> amount
    tool_calls: int = 0
    dtmf_digits: int = 0


@attrs.frozen
class JournaledLine:
    """One row of the ``transcript`` table: ``role`` ``caller``, ``agent``, ``dtmf`` (``text``:
    the keys) or ``tool`` (``text``: ``name(arguments) -> output``; ``tool``: the exchange)."""

    seq: int
    role: str
    text: str
    at: str
    tool: ToolExchange | None = None


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


def _select(db: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> str:
    """``columns`` for a SELECT from ``table``: a column the journal lacks (an older schema) as
    the value a migration would give it."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    return ", ".join(
        name if name in present or name not in _ADDED else f"{_ADDED[name]} AS {name}"
        for name in columns
    )


def _json_object(text: object) -> dict[str, object]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {}


def _call(row: sqlite3.Row) -> JournaledCall:
    values = dict(row)
    values["custom_parameters"] = _json_object(values["custom_parameters"])
    values["usage"] = {
        kind: amount
        for kind, amount in _json_object(values["usage"]).items()
        if isinstance(amount, int | float) and not isinstance(amount, bool)
    }
    opened = values["upstream_opened"]
    values["upstream_opened"] = None if opened is None else bool(opened)
    return JournaledCall(**values)


def _line(row: sqlite3.Row) -> JournaledLine:
    values = dict(row)
    tool = _json_object(values["tool"])
    parts = [text for key in _EXCHANGE if isinstance(text := tool.get(key), str)]
    values["tool"] = ToolExchange(*parts) if len(parts) == len(_EXCHANGE) else None
    return JournaledLine(**values)


def recent_calls(path: str | os.PathLike[str], *, limit: int = 20) -> list[JournaledCall]:
    """The ``limit`` most recently started calls, newest first.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal.
    """
    with _reading(path) as db:
        columns = _select(db, "calls", _CALL_COLUMNS)
        rows = db.execute(
            f"SELECT {columns} FROM calls ORDER BY started_at DESC, rowid DESC LIMIT ?",
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
        columns = _select(db, "calls", _CALL_COLUMNS)
        rows = db.execute(
            f"SELECT {columns} FROM calls WHERE call_sid = ? ORDER BY started_at, rowid",
            (call,),
        ).fetchall()
        if not rows:
            rows = db.execute(f"SELECT {columns} FROM calls WHERE call_id = ?", (call,)).fetchall()
    return [_call(row) for row in rows]


def read_lines(path: str | os.PathLike[str], call_id: str) -> list[JournaledLine]:
    """The transcript of the call ``call_id`` (voxbridge's id), in order.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal.
    """
    with _reading(path) as db:
        columns = _select(db, "transcript", _LINE_COLUMNS)
        rows = db.execute(
            f"SELECT {columns} FROM transcript WHERE call_id = ? ORDER BY seq", (call_id,)
        ).fetchall()
    return [_line(row) for row in rows]
