"""What a voice-AI provider is to voxbridge: a way to open a session, and a codec for it.

Adding a provider means one module with a :class:`Provider` and a :class:`ProviderCodec`, and one
line in :mod:`voxbridge.providers.registry`. Nothing in the call changes.

* :meth:`Provider.session` prepares one provider session: where to connect (a
  :class:`~voxbridge.providers.endpoint.ProviderEndpoint`) and a fresh codec. It may do I/O (Ultravox
  creates the call over REST first); it is called again on every reconnect, with the conversation so
  far, so the new session can be seeded with it.
* A :class:`ProviderCodec` is sans-IO and belongs to one session. It turns caller audio (base64
  mu-law, as Twilio sends it) into provider frames, provider frames into neutral events
  (:mod:`voxbridge.providers.events`), and says what to send when the session opens (and, for a
  service that must acknowledge a session before anything else, once it has), when the caller
  interrupts, and when the call ends, whether the session needs a keepalive message
  (:class:`Keepalive`) besides the link's WebSocket pings, and what it still holds when the link
  stops reading its session (:meth:`ProviderCodec.flush`).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs

from ..errors import Reason
from .endpoint import ProviderEndpoint
from .events import HistoryItem, ProviderEvent, ToolExchange, Truncation, Usage

if TYPE_CHECKING:
    from ..agents import AgentConfig
    from ..tools import Tool

__all__ = [
    "Frame",
    "Keepalive",
    "Provider",
    "ProviderCodec",
    "ProviderSession",
    "configured",
]

#: One WebSocket message: text (JSON) or binary (audio for some providers).
Frame = str | bytes


@attrs.frozen
class Keepalive:
    """An application-level keepalive: ``frame`` sent to the current session every ``interval``
    seconds, for a provider that closes a session it has not heard from for a while and does not
    count WebSocket pings (Deepgram's ``KeepAlive``). The link's upkeep sends it, bounded by
    ``send_timeout`` like every send, on that cadence whether or not caller audio flows (knowing
    that would cost a timestamp per frame); a send that does not finish drops the session."""

    frame: Frame
    interval: float


class ProviderCodec(Protocol):
    """Sans-IO encoding and decoding for one provider session."""

    @property
    def keepalive(self) -> Keepalive | None:
        """The keepalive message this provider needs, and its cadence; ``None`` for providers
        whose sessions WebSocket pings and caller audio keep alive."""
        ...

    @property
    def awaits_acknowledgement(self) -> bool:
        """Whether the service must acknowledge the session before it is sent anything but the
        opening frames (GPT-Live's ``session.started``, Gemini's ``setupComplete``). The link
        then reads until :meth:`acknowledged` says the acknowledgement came (within
        ``connect_timeout``), sends what it returns, and only then gives the session to the
        call: no caller audio, key press or tool result reaches the session before."""
        ...

    def opening(self, history: Sequence[HistoryItem], *, first: bool) -> list[Frame]:
        """Frames to send right after the session opens: configuration, then ``history``
        replayed (transcript lines, key presses, tool exchanges), then -- in the call's first
        session only (``first``; never in a resumed or recycled one, whatever ``history``
        holds) -- the greeting, if the agent speaks first.

        A codec that :attr:`awaits_acknowledgement` returns the frames the service takes
        before its acknowledgement (the configuration); :meth:`acknowledged` returns the rest.
        """
        ...

    def acknowledged(self, frame: Frame) -> list[Frame] | None:
        """Whether ``frame``, read after the opening frames, is the service's acknowledgement
        of the session: ``None`` if it is not (the link reads on), else the frames to send now
        (the rest of the opening: history, greeting; possibly none). Called only for a codec
        that :attr:`awaits_acknowledgement`. It does not decode ``frame``: the call still
        decodes every frame read, this one included, in order."""
        ...

    def audio(self, payload: str) -> Frame:
        """One chunk of caller audio (base64 G.711 mu-law 8 kHz, as Twilio sends it)."""
        ...

    def decode(self, frame: Frame) -> ProviderEvent | None:
        """A provider frame as a neutral event, or ``None`` for frames the bridge ignores.

        Decoding may update the codec's view of the session (which response is in progress).

        Raises:
            BadAudio: an audio chunk fails validation (the call drops it and plays on).
            RemoteProtocolError: the frame is malformed (the call drops it).
        """
        ...

    def interrupt(self, truncations: Sequence[Truncation]) -> list[Frame]:
        """The caller barged in: what to tell the provider.

        ``truncations`` name this session's agent items whose audio the caller had not finished
        hearing, in playback order: the item being heard at the heard millisecond, then the items
        queued behind it at 0. Possibly empty (the provider gives no item ids, or the audio was
        from an earlier session). The frames also cancel a response still being generated, where
        the protocol allows.
        """
        ...

    def tool_result(self, exchange: ToolExchange, *, known: bool) -> list[Frame]:
        """The result of a tool call, for the model; it then answers (speaks).

        ``known`` is false when the session that asked for the call has since been replaced
        (a resume): the codec then replays the whole exchange, where the protocol can.
        """
        ...

    def dtmf(self, digits: str) -> list[Frame]:
        """The caller pressed ``digits`` (``0-9``, ``*``, ``#``, ``A-D``): tell the model, as a
        short user message (:func:`~voxbridge.providers.events.dtmf_message`), and let it answer."""
        ...

    def closing(self) -> list[Frame]:
        """Frames to send before closing the session at the end of the call (best effort)."""
        ...

    def flush(self) -> list[ProviderEvent]:
        """The events this codec still holds, now final: the link stops reading its session
        (the session dropped, was replaced by a recycle, or the call ends). A transcript line
        still being gathered (the provider had not said it was over) is final here, as the
        session ends; events decoded but not returned yet come out too. The call keeps the
        lines and the usage, so the journal and the history a new session is seeded with have
        them. Afterwards the codec holds nothing (a second call returns ``[]``)."""
        ...

    def close_reason(self, code: int) -> Reason:
        """What the provider closing its socket with ``code`` means.

        ``UPSTREAM_CLOSED`` (the link resumes the session), ``AGENT_HANGUP`` (the call ends) or
        ``UPSTREAM_REJECTED`` (the provider refuses us: the call ends, never retried). Each
        provider keeps these in one table, ``CLOSE_REASONS`` in its module.
        """
        ...


@attrs.frozen
class ProviderSession:
    """One prepared provider session: where to connect, its codec and, for a provider that
    reports what a session cost only after it ended (Ultravox's billed duration), how to ask.

    ``usage`` is awaited once, when the call's provider link closes, under ``close_timeout``;
    it returns ``None`` when the provider does not say (yet), and must not raise.
    """

    endpoint: ProviderEndpoint
    codec: ProviderCodec
    usage: Callable[[], Awaitable[Usage | None]] | None = attrs.field(default=None, eq=False)


class Provider(Protocol):
    """A voice-AI provider: its metric label and how to prepare a session."""

    name: str

    def for_agent(self, agent: AgentConfig, tools: Sequence[Tool]) -> Provider:
        """This provider configured for one agent: its model, voice, instructions and greeting
        where the agent sets them (``None`` keeps this provider's), and ``tools`` declared to
        the model. Cheap and without I/O: the call does it once, at start."""
        ...

    async def session(self, history: Sequence[HistoryItem], *, first: bool) -> ProviderSession:
        """Prepare a session seeded with ``history`` (empty at call start). ``first``: this is
        the call's first session (the agent's greeting belongs to it alone; a session that
        resumes or recycles an earlier one is never ``first``, even with an empty ``history``).

        The call bounds this with ``connect_timeout``.

        Raises:
            UpstreamConnectFailed: the provider refuses (``status`` 401/403: a bad key, never
                retried) or the preparation fails (a REST error).
        """
        ...


P = TypeVar("P")

#: The agent fields a provider takes, and the attribute each sets by default.
AGENT_FIELDS = ("model", "voice", "instructions", "greeting")


def configured(provider: P, agent: AgentConfig, tools: Sequence[Tool], **names: str) -> P:
    """A shallow copy of ``provider`` for ``agent``: each of its :data:`AGENT_FIELDS` that is not
    ``None`` set on the copy (on the attribute ``names`` gives for it, e.g.
    ``instructions="prompt"``; the field's own name otherwise), and ``tools`` as a tuple.

    What :meth:`Provider.for_agent` does for most providers; no I/O. The copy keeps the
    provider's class, so a subclass keeps its overrides.
    """
    copied = copy.copy(provider)
    for field in AGENT_FIELDS:
        value = getattr(agent, field)
        if value is not None:
            setattr(copied, names.get(field, field), value)
    copied.tools = tuple(tools)  # type: ignore[attr-defined]  # every provider has tools
    return copied
