"""What a call knows about itself, as plain data owned by the call (not closures)."""

from __future__ import annotations

import attrs

from ..errors import Reason
from ..providers.events import HistoryItem

__all__ = ["CallRecord", "CallState"]


@attrs.define
class CallState:
    """Mutable state of one live call. Times are ``trio.current_time()`` values.

    The carrier's ids come from its stream's start (:class:`voxbridge.carriers.base.StreamStarted`)
    and are ``None`` before it: ``carrier_call_id`` is the carrier's id of the call (Twilio
    ``CallSid``, Telnyx ``call_control_id``, Plivo ``callId``, Vonage ``uuid``), ``stream_id`` its
    id of the media stream, ``account_id`` the carrier account. ``carrier`` is the carrier's name
    (the ``carrier`` metric label).
    """

    call_id: str
    accepted_at: float
    carrier: str = "twilio"
    provider: str = ""
    carrier_call_id: str | None = None
    stream_id: str | None = None
    account_id: str | None = None
    custom_parameters: dict[str, str] = attrs.Factory(dict)
    started_at: float | None = None
    last_caller_frame_at: float | None = None
    frames_from_caller: int = 0
    frames_to_caller: int = 0
    bytes_from_caller: int = 0  # caller audio relayed to the provider (mu-law bytes)
    bytes_to_caller: int = 0  # agent audio sent to the carrier (mu-law bytes)
    upstream_connected_at: float | None = None
    upstream_closed_at: float | None = None
    #: The conversation so far: final transcript lines (``caller``, ``agent``, ``dtmf``) and
    #: tool exchanges, in order; a resumed provider session is seeded with it.
    transcript: list[HistoryItem] = attrs.Factory(list)
    barge_ins: int = 0
    agent: str = "default"
    #: Provider usage so far, by kind (``voxbridge_provider_usage_total``'s ``kind``).
    usage: dict[str, float] = attrs.Factory(dict)
    tool_calls: int = 0
    dtmf_digits: int = 0

    @property
    def last_heard(self) -> float:
        """When the carrier last sent anything (accept time before the first frame)."""
        return self.accepted_at if self.last_caller_frame_at is None else self.last_caller_frame_at


@attrs.frozen
class CallRecord:
    """A finished call, as the registry remembers it. Times are ``trio.current_time()`` values.

    A public record (the journal's columns have the same names): ``call_sid`` holds the carrier's
    id of the call (:attr:`CallState.carrier_call_id`; Twilio's ``CallSid``, whatever the carrier)
    and ``stream_sid`` its id of the media stream (:attr:`CallState.stream_id`).
    """

    call_id: str
    call_sid: str | None
    stream_sid: str | None
    reason: Reason
    detail: str
    close_code: int
    accepted_at: float
    ended_at: float
    last_caller_frame_at: float | None
    upstream_opened: bool
    upstream_closed_at: float | None
    frames_from_caller: int
    frames_to_caller: int
    transcript: tuple[HistoryItem, ...] = ()
    barge_ins: int = 0
    resumes: int = 0
    carrier: str = "twilio"
    provider: str = ""
    started_at: float | None = None  # when the carrier's ``start`` arrived
    bytes_from_caller: int = 0
    bytes_to_caller: int = 0
    custom_parameters: tuple[tuple[str, str], ...] = ()
    agent: str = "default"
    usage: tuple[tuple[str, float], ...] = ()  # (kind, amount), sorted by kind
    tool_calls: int = 0
    dtmf_digits: int = 0

    @property
    def duration(self) -> float:
        return self.ended_at - self.accepted_at

    @property
    def silence(self) -> float:
        """Seconds from the carrier's last frame (or accept) to the end of teardown."""
        last = self.accepted_at if self.last_caller_frame_at is None else self.last_caller_frame_at
        return self.ended_at - last
