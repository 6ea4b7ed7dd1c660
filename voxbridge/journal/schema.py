"""What both journal back ends share about their tables: the columns, the four writes, the
version rule.

SQLite (:mod:`voxbridge.journal.sqlite`) and PostgreSQL (:mod:`voxbridge.journal.postgres`) store
the same two tables, ``calls`` and ``transcript``, with the same columns in their own types (text
timestamps and JSON text in SQLite; ``timestamptz`` and ``jsonb`` in PostgreSQL). The writes are
the same statements in both dialects -- ``INSERT ... ON CONFLICT`` is spelled alike -- built here
from the column lists with each driver's parameter mark (``?`` for ``sqlite3``, ``%s`` for
psycopg), so a column added to the journal is added in one place. PostgreSQL adds ``replica_id``
to every ``calls`` row (which replica wrote it: the crash rule needs it), given as ``extra``.

Versions: each back end numbers its own schema (``PRAGMA user_version`` in SQLite, the
``voxbridge_schema`` table in PostgreSQL). :func:`migration_steps` is the rule both apply when a
journal is opened for writing: a new database gets the whole schema, an older one the migrations
from its version up, one that a newer voxbridge wrote is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = [
    "CALL_COLUMNS",
    "END_COLUMNS",
    "LIBPQ_KEYWORDS",
    "LINE_COLUMNS",
    "START_COLUMNS",
    "JournalError",
    "is_postgres",
    "migration_steps",
    "shown",
    "statements",
    "write_statements",
]


class JournalError(Exception):
    """The journal cannot be opened or read: the message names the journal and says why."""


#: libpq's connection keywords (``psycopg.pq.Conninfo.get_defaults()``): a ``--db`` that begins
#: with one of them and ``=`` is a key/value connection string, not a file name.
LIBPQ_KEYWORDS = frozenset(
    [
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "dbname",
        "fallback_application_name",
        "gssdelegation",
        "gssencmode",
        "gsslib",
        "host",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "krbsrvname",
        "load_balance_hosts",
        "max_protocol_version",
        "min_protocol_version",
        "oauth_client_id",
        "oauth_client_secret",
        "oauth_issuer",
        "oauth_scope",
        "options",
        "passfile",
        "password",
        "port",
        "replication",
        "require_auth",
        "requirepeer",
        "scram_client_key",
        "scram_server_key",
        "service",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "sslcert",
        "sslcertmode",
        "sslcompression",
        "sslcrl",
        "sslcrldir",
        "sslkey",
        "sslkeylogfile",
        "sslmode",
        "sslnegotiation",
        "sslpassword",
        "sslrootcert",
        "sslsni",
        "target_session_attrs",
        "tcp_user_timeout",
        "user",
    ]
)
_KEY_VALUE = re.compile(r"\s*([A-Za-z_]+)\s*=")


def is_postgres(db: str | os.PathLike[str]) -> bool:
    """Whether ``db`` names a PostgreSQL journal: a ``postgresql://`` or ``postgres://`` URI, or a
    libpq key/value string (``"host=db dbname=voxbridge"``: it begins with a libpq keyword and
    ``=``; a SQLite file of such a name is given as ``./host=...``)."""
    if not isinstance(db, str):
        return False
    if db.startswith(("postgresql://", "postgres://")):
        return True
    match = _KEY_VALUE.match(db)
    return match is not None and match.group(1) in LIBPQ_KEYWORDS


def shown(db: str | os.PathLike[str]) -> str:
    """``db`` as messages show it, never with a password: a SQLite path as it is, a PostgreSQL
    DSN as libpq reads it without its password
    (:func:`~voxbridge.journal.postgres.redact_dsn`), and any other URI (``mysql://...``: not a
    journal) by its scheme alone."""
    if is_postgres(db):
        from .postgres import redact_dsn  # postgres imports this module

        return redact_dsn(os.fspath(db))
    path = os.fspath(db)
    scheme, colon_slashes, _ = path.partition("://")
    return f"{scheme}://(not shown)" if colon_slashes else path


#: The ``calls`` columns, in table order (the reader selects them all).
CALL_COLUMNS = (
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
#: The ``transcript`` columns a reader selects (``call_id`` is the key it selects by).
LINE_COLUMNS = ("seq", "role", "text", "at", "tool")
#: What a ``live`` row holds when the carrier's ``start`` arrives (status ``live`` is implied).
START_COLUMNS = (
    "call_id",
    "call_sid",
    "stream_sid",
    "carrier",
    "provider",
    "started_at",
    "custom_parameters",
    "agent",
)
#: What the end of a call writes (status ``ended`` is implied). ``started_at`` is used only when
#: the call has no start row; an existing row keeps its own.
END_COLUMNS = (
    "call_id",
    "call_sid",
    "stream_sid",
    "carrier",
    "provider",
    "started_at",
    "ended_at",
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
_TRANSCRIPT_COLUMNS = ("call_id", "seq", "role", "text", "at", "tool")


def write_statements(mark: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The journal's four writes, keyed as the writer names its rows.

    * ``started``: a ``live`` row, unless the call has one already;
    * ``line``: one transcript line (a duplicate is an error: a line is journaled once);
    * ``ended``: the call's complete row, inserted or completing its ``live`` (or ``crashed``) row;
    * ``fill``: a transcript line from the end record, unless that line is there already.

    Args:
        mark: the driver's parameter placeholder (``"?"``, ``"%s"``).
        extra: ``calls`` columns appended to the ``started`` and ``ended`` rows, in this order.

    Returns:
        ``{name: sql}``; each statement takes one row of parameters in its columns' order.
    """

    def values(count: int, status: str) -> str:
        marks = [mark] * count
        marks.insert(5, status)  # after call_id, call_sid, stream_sid, carrier, provider
        return ", ".join(marks)

    start = (*START_COLUMNS[:5], "status", *START_COLUMNS[5:], *extra)
    end = (*END_COLUMNS[:5], "status", *END_COLUMNS[5:], *extra)
    updated = [
        f"{name} = excluded.{name}"
        for name in (*END_COLUMNS, *extra)
        if name not in ("call_id", "started_at")
    ]
    updated.insert(4, "status = 'ended'")
    live, ended = "'live'", "'ended'"
    line = f"INSERT INTO transcript ({', '.join(_TRANSCRIPT_COLUMNS)}) VALUES ({', '.join([mark] * 6)})"
    return {
        "started": (
            f"INSERT INTO calls ({', '.join(start)}) "
            f"VALUES ({values(len(START_COLUMNS) + len(extra), live)}) "
            "ON CONFLICT (call_id) DO NOTHING"
        ),
        "line": line,
        "ended": (
            f"INSERT INTO calls ({', '.join(end)}) "
            f"VALUES ({values(len(END_COLUMNS) + len(extra), ended)}) "
            f"ON CONFLICT (call_id) DO UPDATE SET {', '.join(updated)}"
        ),
        "fill": f"{line} ON CONFLICT (call_id, seq) DO NOTHING",
    }


def migration_steps(
    where: str, version: int, current: int, schema: str, migrations: Mapping[int, str]
) -> list[str]:
    """The scripts that bring a journal at ``version`` to ``current``, to run in one transaction.

    Args:
        where: the journal, as messages name it.
        version: the journal's schema version; 0 for a database without a journal.
        current: the version this voxbridge writes.
        schema: the script that creates a journal at ``current``.
        migrations: ``migrations[n]`` brings a journal from ``n`` to ``n + 1``.

    Returns:
        ``[schema]`` for a new journal, the migrations in order for an older one, ``[]`` for one
        that is up to date.

    Raises:
        JournalError: a newer voxbridge wrote the journal, or no migration starts at its version.
    """
    if version > current:
        raise JournalError(
            f"journal {where!r} has schema version {version}, written by a newer voxbridge "
            f"(this one knows {current})"
        )
    if version == 0:
        return [schema]
    missing = [v for v in range(version, current) if v not in migrations]
    if missing:
        raise JournalError(
            f"journal {where!r} has schema version {version}, which this voxbridge cannot migrate"
        )
    return [migrations[v] for v in range(version, current)]


def statements(script: str) -> list[str]:
    """The statements of a schema or migration script (no ``;`` inside a statement)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
