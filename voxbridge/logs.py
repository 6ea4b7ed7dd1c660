"""Logging setup for the command line: rich console lines or one JSON object per line.

Library modules only call ``logging.getLogger("voxbridge.*")``; handlers are the application's
business, so embedders keep their own. Structured fields travel in ``extra=`` and show up as keys in
JSON and as ``key=value`` pairs on the console.

Which call a line belongs to travels in a context variable, not in every ``extra=``:
:meth:`voxbridge.session.Call.run` sets it (:func:`call_context`) for as long as the call runs, and
trio copies a task's context variables into every task it starts, so the call's own tasks, its tool
calls and the reader tasks of its provider sockets all see it -- as do hypercorn's lines emitted in
the call's task. :class:`CallContextFilter`, on a handler, copies ``call_id``, ``call_sid`` and
``stream_sid`` onto each record it handles (an explicit ``extra=`` wins). :func:`configure` installs
it; embedders add it to their own handlers.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Protocol, TextIO

__all__ = [
    "CallContextFilter",
    "CallFields",
    "ConsoleFormatter",
    "JsonFormatter",
    "call_context",
    "configure",
    "current_call",
]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class CallFields(Protocol):
    """What a log line says about its call (``voxbridge.session.CallState`` is one)."""

    @property
    def call_id(self) -> str: ...

    @property
    def carrier_call_id(self) -> str | None: ...

    @property
    def stream_id(self) -> str | None: ...


# The call the current task works for. It holds the call's live state, not a copy: the Twilio ids
# arrive with ``start``, after the call (and its context) began, and every task sees them then.
_CALL: ContextVar[CallFields | None] = ContextVar("voxbridge_call", default=None)


@contextmanager
def call_context(call: CallFields) -> Iterator[None]:
    """Within the block, and in every task started from it, log lines belong to ``call``.

    Its fields are read when a line is emitted, so ids set later (``carrier_call_id`` once the
    stream starts) appear from then on. Blocks nest; leaving one restores the outer call (or none).
    """
    token = _CALL.set(call)
    try:
        yield
    finally:
        _CALL.reset(token)


def current_call() -> CallFields | None:
    """The call the current task works for (see :func:`call_context`), or ``None``."""
    return _CALL.get()


class CallContextFilter(logging.Filter):
    """Adds ``call_id``, ``call_sid`` and ``stream_sid`` of the current call to each record
    (``call_sid`` and ``stream_sid`` keep Twilio's names for any carrier: they hold the carrier's
    ids of the call and of its media stream, ``carrier_call_id`` and ``stream_id``).

    Put it on a handler (``handler.addFilter(CallContextFilter())``): it then sees the records of
    every logger the handler serves, in the task that emits them. Outside a call it adds nothing;
    inside one it adds all three (``None`` until the carrier's ``start`` named the call). A field
    the record already has (an explicit ``extra=``) is kept. It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        call = _CALL.get()
        if call is not None:
            fields = record.__dict__
            if "call_id" not in fields:
                fields["call_id"] = call.call_id
            if "call_sid" not in fields:
                fields["call_sid"] = call.carrier_call_id
            if "stream_sid" not in fields:
                fields["stream_sid"] = call.stream_id
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    """The message followed by the structured fields as ``key=value`` (``None`` ones left out)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items() if v is not None)
        message = record.getMessage()
        text = f"{message}  {fields}" if fields else message
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(fmt: str = "console", level: str = "info", *, stream: TextIO | None = None) -> None:
    """Install one handler on the ``voxbridge`` and ``hypercorn`` loggers (idempotent).

    Args:
        fmt: ``"json"`` (one object per line, to stderr) or ``"console"`` (rich, to stdout).
        level: the loggers' level name (``"debug"``, ``"info"``, ...).
        stream: where to write instead (tests).

    The handler carries a :class:`CallContextFilter`; the loggers stop propagating to the root.
    """
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr if stream is None else stream)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        console = None if stream is None else Console(file=stream, width=200)
        handler = RichHandler(console=console, show_path=False, markup=False, log_time_format="%X")
        handler.setFormatter(ConsoleFormatter())
    handler.addFilter(CallContextFilter())
    for name in ("voxbridge", "hypercorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
