"""``voxbridge calls`` and ``voxbridge transcript CALL_SID``: the SQLite journal, for people.

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
from .journal.reader import JournaledCall, find_calls, read_lines, recent_calls

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

    Returns:
        The exit status: 0, or 1 (with a one-line message) if there is no readable journal.
    """
    try:
        calls = recent_calls(path, limit=limit)
    except JournalError as exc:
        console.print(_plain(f"voxbridge calls: {exc}", "red"), soft_wrap=True)
        return 1
    if not calls:
        console.print(_plain(f"no calls in {os.fspath(path)}"))
        return 0
    table = Table(
        title=_plain(f"{len(calls)} most recent calls in {os.fspath(path)}"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    # In a narrow terminal, cells fold onto more lines (never cut off).
    table.add_column("started (UTC)", overflow="fold")
    table.add_column("CallSid", overflow="fold")
    table.add_column("reason", overflow="fold")
    table.add_column("duration", justify="right", overflow="fold")
    table.add_column("frames in/out", justify="right", overflow="fold")
    table.add_column("resumes", justify="right", overflow="fold")
    table.add_column("barge-ins", justify="right", overflow="fold")
    for call in calls:
        table.add_row(
            _when(call.started_at),
            _sid(call),
            _outcome(call),
            _duration(call.duration_s),
            f"{call.frames_from_caller}/{call.frames_to_caller}",
            str(call.resumes),
            str(call.barge_ins),
        )
    if console.is_terminal:
        console.print(table)
    else:  # piped (to grep, to a file): every row whole, on one line
        Console(file=console.file, width=_UNLIMITED, highlight=False).print(table)
    return 0


def print_transcript(console: Console, path: str | os.PathLike[str], call: str) -> int:
    """Print the transcript of ``call`` (a CallSid, or a voxbridge call id) in ``path``.

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
            _plain(f"voxbridge transcript: no call {call!r} in {os.fspath(path)}", "red"),
            soft_wrap=True,
        )
        return 1
    for number, (entry, lines) in enumerate(transcripts):
        if number:
            console.print()
        ended = _outcome(entry)
        header = _plain(
            f"call {entry.call_sid or '-'} (voxbridge id {entry.call_id}), started "
            f"{_when(entry.started_at)} UTC, {_duration(entry.duration_s)}: "
        )
        header.append_text(ended)
        piped = not console.is_terminal  # piped: one line per transcript line, never wrapped
        console.print(header, soft_wrap=piped)
        if not lines:
            console.print(Text("(no transcript lines)", style="dim"))
        for line in lines:
            text = _plain(f"{line.role}: ", "bold cyan" if line.role == "agent" else "bold")
            text.append_text(_plain(line.text))
            console.print(text, soft_wrap=piped)
    return 0
