"""Which agent audio the caller has actually heard, from Twilio's mark echoes.

Twilio plays the audio we send in order and, when the audio before a ``mark`` has finished playing,
echoes that mark back. So after every chunk of agent audio the call sends a mark, and this object
remembers, per mark, which agent item it closes and how many milliseconds of that item had been
sent up to it. When a mark comes back, everything up to it has been *played*: the caller heard it.

On barge-in (the caller starts talking over the agent) the call asks :meth:`Playback.interrupt`:
if audio is still outstanding it returns the agent item and the millisecond the caller actually
heard -- from played marks, not from a wall clock -- for the provider's truncate, and voids every
outstanding mark, because Twilio echoes the marks a ``clear`` discarded too, and those were never
heard.

Pure state: no clock, no I/O. G.711 mu-law at 8 kHz is 8 bytes per millisecond.
"""

from __future__ import annotations

from ..audio import BYTES_PER_MS

__all__ = ["BYTES_PER_MS", "Playback"]

_PREFIX = "vb"


class Playback:
    """Mark bookkeeping for one call's agent audio."""

    __slots__ = ("_heard", "_item", "_item_bytes", "_pending", "_seq", "_void_upto")

    def __init__(self) -> None:
        self._seq = 0
        self._item: str | None = None
        self._item_bytes = 0
        # (seq, item, bytes of it sent up to the mark), oldest first; a list, not a deque: it
        # stays short, and an empty deque costs 600 bytes per call
        self._pending: list[tuple[int, str | None, int]] = []
        self._heard: tuple[str | None, int] = (None, 0)  # (item, bytes of it heard)
        self._void_upto = 0

    @property
    def outstanding(self) -> bool:
        """Audio has been sent that the caller has not finished hearing."""
        return bool(self._pending)

    @property
    def heard_ms(self) -> int:
        """Milliseconds of the current agent item the caller has heard."""
        item, heard = self._heard
        return heard // BYTES_PER_MS if item == self._item else 0

    def sent(self, item_id: str | None, nbytes: int) -> str:
        """Record ``nbytes`` of agent audio of ``item_id`` sent; returns the mark name to send."""
        if item_id != self._item:
            self._item = item_id
            self._item_bytes = 0
        self._item_bytes += nbytes
        self._seq += 1
        self._pending.append((self._seq, item_id, self._item_bytes))
        return f"{_PREFIX}{self._seq}"

    def played(self, name: str) -> bool:
        """Twilio echoed mark ``name``. Returns True if it means audio was heard."""
        if not name.startswith(_PREFIX) or not name[len(_PREFIX) :].isdigit():
            return False  # not ours
        seq = int(name[len(_PREFIX) :])
        if seq <= self._void_upto:
            return False  # discarded by a clear, never played
        pending = self._pending
        played = 0
        while played < len(pending) and pending[played][0] <= seq:
            played += 1
        if not played:
            return False
        _, item, upto = pending[played - 1]
        self._heard = (item, upto)
        del pending[:played]
        return True

    def interrupt(self) -> tuple[str | None, int] | None:
        """The caller barged in. Returns ``(item_id, audio_end_ms)`` if agent audio was still
        outstanding (then the caller's playback must be cleared), else ``None``."""
        if not self._pending:
            return None
        item, heard_ms = self._item, self.heard_ms
        self._void_upto = self._seq
        self._pending.clear()
        self._item = None  # the next agent audio starts a new item
        self._item_bytes = 0
        return item, heard_ms
