"""Reading a journal (``voxbridge calls``, ``voxbridge transcript``, tests, scripts): SQLite, or
PostgreSQL when the location is a DSN (``postgresql://...``, ``postgres://...`` or a libpq
key/value string: :func:`~voxbridge.journal.schema.is_postgres`). Messages show a DSN without its
password.

Readers never create a journal by mistake (a missing file, or a database without a
``voxbridge_schema`` table, is a :class:`JournalError`) and never write one (SQLite's ``PRAGMA
query_only``; PostgreSQL's ``default_transaction_read_only``). They never block the server's
writer and see every committed record (see :mod:`voxbridge.journal.sqlite` and
:mod:`voxbridge.journal.postgres` for the schemas). Whichever back end, rows read alike: timestamps
as ISO 8601 UTC text with milliseconds, JSON columns as dicts. A SQLite file is opened ``mode=rw``
(SQLite falls back to read-only for a write-protected file) rather than ``mode=ro``: a read-only
connection that is the last to close leaves the ``-wal`` and ``-shm`` files behind.

A journal an older voxbridge wrote (SQLite schema version 1) is read as it is, never migrated: the
columns it lacks read as the migration would fill them (``agent`` ``None``, ``usage`` ``{}``,
counts 0, ``tool`` ``None``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ..providers.events import ToolExchange
from .postgres import connect, error_line, redact_dsn, require_psycopg
from .schema import CALL_COLUMNS, LINE_COLUMNS, JournalError, is_postgres, shown

__all__ = [
    "JournaledCall",
    "JournaledLine",
    "find_calls",
    "location",
    "read_lines",
    "recent_calls",
]

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


def location(path: str | os.PathLike[str]) -> str:
    """The journal as messages name it: the path, or the DSN without its password
    (:func:`~voxbridge.journal.schema.shown`)."""
    return shown(path)


@attrs.frozen
class _Reading:
    """One open journal: ``query(sql, args)`` runs ``sql`` (``?`` parameters) and returns rows
    as dicts; ``columns(table)`` names the table's columns; ``order`` breaks ties in
    ``started_at`` in insertion order (SQLite) or by call id (PostgreSQL)."""

    query: Callable[[str, Sequence[object]], list[dict[str, Any]]]
    columns: Callable[[str], set[str]]
    order: str


@contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[_Reading]:
    if isinstance(path, str) and is_postgres(path):
        with _reading_postgres(path) as reading:
            yield reading
        return
    file = Path(path)
    where = shown(path)
    if os.fspath(path) == ":memory:" or not file.is_file():
        raise JournalError(f"no journal at {where!r}")
    try:
        connection = sqlite3.connect(f"{file.resolve().as_uri()}?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {where!r}: {exc}") from None
    connection.row_factory = sqlite3.Row

    def query(sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        return [dict(row) for row in connection.execute(sql, args)]

    def columns(table: str) -> set[str]:
        return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}

    try:
        connection.execute("PRAGMA query_only = ON")
        yield _Reading(query, columns, "rowid")
    except sqlite3.Error as exc:
        raise JournalError(f"{where!r} is not a readable voxbridge journal: {exc}") from None
    finally:
        connection.close()


def _value(value: object) -> object:
    """A PostgreSQL value as the SQLite journal holds it: a ``timestamptz`` as ISO text."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


@contextmanager
def _reading_postgres(dsn: str) -> Iterator[_Reading]:
    pg = require_psycopg()
    where = redact_dsn(dsn)
    try:
        connection = connect(dsn, default_transaction_read_only="on")
    except pg.Error as exc:
        raise JournalError(f"cannot open the journal {where!r}: {error_line(exc)}") from None

    def query(sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        with connection.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), args)
            names = [column.name for column in cursor.description or ()]
            return [{n: _value(v) for n, v in zip(names, row, strict=True)} for row in cursor]

    def columns(table: str) -> set[str]:
        rows = query(
            "SELECT attname FROM pg_attribute "
            "WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
        return {row["attname"] for row in rows}

    try:
        if not query("SELECT to_regclass('voxbridge_schema') AS t", ())[0]["t"]:
            raise JournalError(f"no journal at {where!r}")
        yield _Reading(query, columns, "call_id")
    except pg.Error as exc:
        raise JournalError(
            f"{where!r} is not a readable voxbridge journal: {error_line(exc)}"
        ) from None
    finally:
        connection.close()


def _select(db: _Reading, table: str, columns: tuple[str, ...]) -> str:
    """``columns`` for a SELECT from ``table``: a column the journal lacks (an older schema) as
    the value a migration would give it."""
    present = db.columns(table)
    return ", ".join(
        name if name in present or name not in _ADDED else f"{_ADDED[name]} AS {name}"
        for name in columns
    )


def _json_object(value: object) -> dict[str, object]:
    """A JSON object column: text (SQLite) or already decoded (PostgreSQL's ``jsonb``)."""
    try:
        value = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        value = None
    return dict(value) if isinstance(value, Mapping) else {}


def _call(row: dict[str, Any]) -> JournaledCall:
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


def _line(row: dict[str, Any]) -> JournaledLine:
    values = dict(row)
    tool = _json_object(values["tool"])
    parts = [text for key in _EXCHANGE if isinstance(text := tool.get(key), str)]
    values["tool"] = ToolExchange(*parts) if len(parts) == len(_EXCHANGE) else None
    return JournaledLine(**values)


def recent_calls(path: str | os.PathLike[str], *, limit: int = 20) -> list[JournaledCall]:
    """The ``limit`` most recently started calls, newest first.

    Args:
        path: a SQLite path, or a ``postgresql://`` DSN.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal, or the database cannot
            be reached.
    """
    with _reading(path) as db:
        columns = _select(db, "calls", CALL_COLUMNS)
        rows = db.query(
            f"SELECT {columns} FROM calls ORDER BY started_at DESC, {db.order} DESC LIMIT ?",
            (limit,),
        )
    return [_call(row) for row in rows]


def find_calls(path: str | os.PathLike[str], call: str) -> list[JournaledCall]:
    """The calls whose CallSid is ``call`` (oldest first; a carrier may reuse one for several
    streams), or else the call whose voxbridge call id is ``call``.

    Args:
        path: a SQLite path, or a ``postgresql://`` DSN.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal, or the database cannot
            be reached.
    """
    with _reading(path) as db:
        columns = _select(db, "calls", CALL_COLUMNS)
        rows = db.query(
            f"SELECT {columns} FROM calls WHERE call_sid = ? ORDER BY started_at, {db.order}",
            (call,),
        )
        if not rows:
            rows = db.query(f"SELECT {columns} FROM calls WHERE call_id = ?", (call,))
    return [_call(row) for row in rows]


def read_lines(path: str | os.PathLike[str], call_id: str) -> list[JournaledLine]:
    """The transcript of the call ``call_id`` (voxbridge's id), in order.

    Args:
        path: a SQLite path, or a ``postgresql://`` DSN.

    Raises:
        JournalError: no journal at ``path``, or not a voxbridge journal, or the database cannot
            be reached.
    """
    with _reading(path) as db:
        columns = _select(db, "transcript", LINE_COLUMNS)
        rows = db.query(
            f"SELECT {columns} FROM transcript WHERE call_id = ? ORDER BY seq", (call_id,)
        )
    return [_line(row) for row in rows]
