"""``voxbridge calls`` and ``voxbridge transcript CALL_SID``: the journal (SQLite or PostgreSQL),
for people.

Everything shown comes from carriers, callers and providers, so it is printed as plain text (no
rich markup) with control characters replaced: a transcript cannot restyle or drive the terminal.
"""

from __future__ import annotations

import os
import re
from datetime import datetime

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .journal import JournalError
from .journal.reader import (
    JournaledCall,
    JournaledLine,
    find_calls,
    location,
    read_lines,
    recent_calls,
)

__all__ = ["print_calls", "print_transcript"]

_UNLIMITED = 10_000  # columns: wide enough for any row at its natural width

# C0 and C1 control characters, DEL and the Unicode line/paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _plain(value: object, style: str = "") -> Text:
    return Text(_CONTROL.sub("\N{REPLACEMENT CHARACTER}", str(value)), style=style)


def _when(iso: str | None) -> str:
    """``2026-05-01T12:00:03.250Z`` as ``2026-05-01 12:00:03``."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _amount(value: float) -> str:
    """``950``, ``1.2k``, ``3.4M``: a count at a glance."""
    if abs(value) < 1000:
        return f"{value:g}" if value != int(value) else str(int(value))
    if abs(value) < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.1f}M"


def _usage(usage: dict[str, float]) -> str:
    """A call's provider usage in one cell: ``in 1.2k tok, out 3.4k tok`` (OpenAI's text and
    audio tokens; cached input tokens are a part of the input), ``12.3 s billed`` (Ultravox);
    any other kind as ``kind amount``; ``-`` for none."""
    rest = dict(usage)
    rest.pop("input_cached_tokens", None)  # counted in the input tokens already
    parts: list[str] = []
    for label, prefix in (("in", "input_"), ("out", "output_")):
        kinds = [kind for kind in rest if kind.startswith(prefix) and kind.endswith("_tokens")]
        if kinds:
            parts.append(f"{label} {_amount(sum(rest.pop(kind) for kind in kinds))} tok")
    billed = rest.pop("billed_seconds", None)
    if billed is not None:
        parts.append(f"{billed:.1f} s billed")
    parts.extend(f"{kind} {_amount(amount)}" for kind, amount in sorted(rest.items()))
    return ", ".join(parts) or "-"


def _line(line: JournaledLine) -> Text:
    """One transcript row: ``caller: ...``, ``agent: ...``, ``keys: 12#``, or ``tool: name(...)
    -> ...`` (with the outcome when it is not ``ok``)."""
    if line.role == "dtmf":
        text = _plain("keys: ", "bold yellow")
        text.append_text(_plain(line.text))
        return text
    if line.role == "tool":
        text = _plain("tool: ", "bold magenta")
        text.append_text(_plain(line.text, "dim"))
        if line.tool is not None and line.tool.outcome != "ok":
            text.append_text(_plain(f" ({line.tool.outcome})", "red"))
        return text
    text = _plain(f"{line.role}: ", "bold cyan" if line.role == "agent" else "bold")
    text.append_text(_plain(line.text))
    return text


def _outcome(call: JournaledCall) -> Text:
    if call.status == "live":
        return Text("live", style="cyan")
    if call.status == "crashed":
        return Text("crashed", style="red")
    return _plain(call.reason or "-", "red" if call.reason == "internal_error" else "")


def _sid(call: JournaledCall) -> Text:
    if call.call_sid:
        return _plain(call.call_sid)
    return _plain(f"(call {call.call_id})", "dim")  # never started: the voxbridge id finds it


def print_calls(console: Console, path: str | os.PathLike[str], limit: int = 20) -> int:
    """Print the ``limit`` most recent calls in ``path`` as a table, newest first.

    Args:
        console: where to print.
        path: a SQLite path, or a PostgreSQL DSN (a ``postgresql://`` URI or a libpq
            key/value string; shown without its password).
        limit: how many calls at most.

    Returns:
        The exit status: 0, or 1 (with a one-line message) if there is no readable journal.
    """
    try:
        calls = recent_calls(path, limit=limit)
    except JournalError as exc:
        console.print(_plain(f"voxbridge calls: {exc}", "red"), soft_wrap=True)
        return 1
    if not calls:
        console.print(_plain(f"no calls in {location(path)}"))
        return 0
    table = Table(
        title=_plain(f"{len(calls)} most recent calls in {location(path)}"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    # In a narrow terminal, cells fold onto more lines (never cut off).
    table.add_column("started (UTC)", overflow="fold")
    table.add_column("CallSid", overflow="fold")
    table.add_column("agent", overflow="fold")
    table.add_column("reason", overflow="fold")
    table.add_column("duration", justify="right", overflow="fold")
    table.add_column("frames in/out", justify="right", overflow="fold")
    table.add_column("resumes", justify="right", overflow="fold")
    table.add_column("barge-ins", justify="right", overflow="fold")
    table.add_column("tools", justify="right", overflow="fold")
    table.add_column("usage", overflow="fold")
    for call in calls:
        table.add_row(
            _when(call.started_at),
            _sid(call),
            _plain(call.agent or "-"),
            _outcome(call),
            _duration(call.duration_s),
            f"{call.frames_from_caller}/{call.frames_to_caller}",
            str(call.resumes),
            str(call.barge_ins),
            str(call.tool_calls),
            _usage(call.usage),
        )
    if console.is_terminal:
        console.print(table)
    else:  # piped (to grep, to a file): every row whole, on one line
        Console(file=console.file, width=_UNLIMITED, highlight=False).print(table)
    return 0


def print_transcript(console: Console, path: str | os.PathLike[str], call: str) -> int:
    """Print the transcript of ``call`` (a CallSid, or a voxbridge call id) in ``path`` (a SQLite
    path, or a PostgreSQL DSN, shown without its password).

    Returns:
        The exit status: 0, or 1 (with a one-line message) if there is no readable journal or no
        such call.
    """
    try:
        found = find_calls(path, call)
        transcripts = [(entry, read_lines(path, entry.call_id)) for entry in found]
    except JournalError as exc:
        console.print(_plain(f"voxbridge transcript: {exc}", "red"), soft_wrap=True)
        return 1
    if not found:
        console.print(
            _plain(f"voxbridge transcript: no call {call!r} in {location(path)}", "red"),
            soft_wrap=True,
        )
        return 1
    for number, (entry, lines) in enumerate(transcripts):
        if number:
            console.print()
        ended = _outcome(entry)
        agent = f", agent {entry.agent}" if entry.agent else ""
        header = _plain(
            f"call {entry.call_sid or '-'} (voxbridge id {entry.call_id}{agent}), started "
            f"{_when(entry.started_at)} UTC, {_duration(entry.duration_s)}: "
        )
        header.append_text(ended)
        piped = not console.is_terminal  # piped: one line per transcript line, never wrapped
        console.print(header, soft_wrap=piped)
        if not lines:
            console.print(Text("(no transcript lines)", style="dim"))
        for line in lines:
            console.print(_line(line), soft_wrap=piped)
    return 0
