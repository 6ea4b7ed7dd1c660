"""The calls a process is running, and a short memory of the ones that ended."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from ..errors import Reason
from .state import CallRecord

if TYPE_CHECKING:
    from .call import Call

__all__ = ["CallRegistry"]


class CallRegistry:
    """Active calls by id, plus the last ``history`` finished :class:`CallRecord` values.

    Only the call itself adds and removes entries (in ``Call.run``), so "in the registry" means
    exactly "between accept and the end of teardown".
    """

    def __init__(self, history: int = 256) -> None:
        self._active: dict[str, Call] = {}
        self.recent: deque[CallRecord] = deque(maxlen=history)
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._active

    def active(self) -> list[Call]:
        """A snapshot of the calls in progress."""
        return list(self._active.values())

    def add(self, call: Call) -> None:
        self._active[call.state.call_id] = call
        self._notify()

    def remove(self, call: Call, record: CallRecord) -> None:
        self._active.pop(call.state.call_id, None)
        self.recent.append(record)
        self._notify()

    def find(self, call_sid: str) -> CallRecord | None:
        """The most recent finished call with this carrier call sid."""
        for record in reversed(self.recent):
            if record.call_sid == call_sid:
                return record
        return None

    def end_all(self, reason: Reason, detail: str = "") -> int:
        """Ask every active call to end with ``reason``. Returns how many were asked."""
        calls = self.active()
        for call in calls:
            call.end(reason, detail)
        return len(calls)

    async def wait_changed(self) -> None:
        """Wait until a call is added or removed."""
        await self._changed.wait()

    async def wait_empty(self) -> None:
        """Wait until no call is active."""
        while self._active:
            await self.wait_changed()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
