"""Ultravox's server WebSocket medium as a sans-IO codec: :class:`UltravoxCodec`.

An Ultravox session has two steps: the connect step creates a *call* over REST and returns its
``joinUrl`` (:class:`voxbridge.providers.ultravox_rest.UltravoxProvider`); the bridge then joins
that WebSocket and speaks through this codec. The codec does no I/O, reads no clock and logs
nothing: it only turns frames into neutral events and back.

Wire shapes follow Ultravox's documentation (repository ``fixie-ai/ultradox``): the data messages
in ``apps/datamessages.mdx``; the call's ``billedDuration`` (:func:`parse_duration`) in the
OpenAPI schema (``api-reference/calls/calls-get.mdx`` renders
``https://api.ultravox.ai/api/schema/``: ``ultravox.v1.Call``).

On the socket, binary frames are audio -- raw s16le mono PCM at :data:`SAMPLE_RATE` (set at call
creation), both ways -- and text frames are JSON data messages. Twilio speaks G.711 mu-law, so
:class:`UltravoxCodec` transcodes on the hot path (mu-law <-> PCM16 at the same 8 kHz rate: a table
lookup per sample, no resampling). Data messages map to neutral events:

* ``transcript`` messages stream an utterance as either ``text`` (the full text so far) or ``delta``
  (an increment), keyed by ``ordinal``; one :class:`~voxbridge.providers.events.Transcript` is emitted
  when the ``final`` message arrives, never for partials.
* ``playback_clear_buffer`` (the caller barged in; drop unplayed agent audio) becomes
  :class:`~voxbridge.providers.events.SpeechStarted`, which makes the bridge clear Twilio's buffer.
  Ultravox truncates the agent's turn on its side, so :meth:`UltravoxCodec.interrupt` sends nothing.
  Ultravox stops the interrupted turn before it sends the clear, on the same ordered socket, so the
  audio after it is the next turn's: Ultravox's own client plays it (``ultravox-websocket-example-
  client``), and so does the bridge.
* ``client_tool_invocation`` (the model calls one of the call's client tools) becomes a
  :class:`~voxbridge.providers.events.ToolCall`; the bridge runs the tool and answers with
  :meth:`UltravoxCodec.tool_result` (a ``client_tool_result``). The tools are declared at creation
  as client *temporary tools* in ``selectedTools``.
* Agent audio must be whole 16-bit samples; an odd-length frame raises
  :class:`~voxbridge.errors.BadAudio` and the call drops that frame alone.
* ``state``, ``call_started``, ``pong``, ``debug`` and types added later are ignored (``None``).

Key presses reach the model as a ``user_text_message`` (:meth:`UltravoxCodec.dtmf`); the end of
the call is a ``hang_up`` (:meth:`UltravoxCodec.closing`).

Ultravox ends the call itself when the agent hangs up and closes the socket with 1000; any other close
is a dropped session the bridge may resume (:data:`CLOSE_REASONS`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ..audio import pcm16_to_ulaw, ulaw_b64_to_pcm16
from ..errors import BadAudio, Reason, RemoteProtocolError
from .base import Frame, ProviderCodec
from .events import (
    AgentAudio,
    HistoryItem,
    ProviderEvent,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    dtmf_message,
    tool_result_message,
)

__all__ = ["CLOSE_REASONS", "SAMPLE_RATE", "UltravoxCodec", "parse_duration"]

#: Audio sample rate (Hz) both ways, asked for at call creation: the caller's rate, so the codec
#: converts mu-law <-> PCM16 without resampling.
SAMPLE_RATE = 8000
#: Transcripts in flight (no ``final`` yet) kept per session; older ones are dropped beyond this.
MAX_PENDING_TRANSCRIPTS = 64

_ROLES = {"user": "caller", "agent": "agent"}
#: ``client_tool_result.errorType`` per ``ToolExchange.outcome`` (``apps/datamessages.mdx``:
#: ``undefined``, no such tool; ``implementation-error``, the tool exists but failed).
_ERROR_TYPES = {"unknown_tool": "undefined"}
#: A protobuf ``Duration`` in JSON, as Ultravox writes durations (``"12.3s"``, ``"0s"``).
_DURATION = re.compile(r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,9})?s")


def _json(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


class UltravoxCodec:
    """Encode caller audio and decode Ultravox frames for one session (sans-IO, one per session).

    Args:
        hangup_message: what the agent says before ending the call when the bridge hangs up
            (empty: hang up at once, which is right when the caller has already gone).
        call_id: the Ultravox ``callId`` of this session's call (``None`` if Ultravox did not
            say), for
            :meth:`~voxbridge.providers.ultravox_rest.UltravoxProvider.billed_usage` once the
            session is over.
    """

    def __init__(self, *, hangup_message: str = "", call_id: str | None = None) -> None:
        self.hangup_message = hangup_message
        self.call_id = call_id
        # ordinal -> (role, text so far) for utterances whose final message has not arrived
        self._pending: dict[object, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"UltravoxCodec(call_id={self.call_id!r}, pending={len(self._pending)})"

    #: Nothing to wait for: the call was configured when it was created.
    awaits_acknowledgement = False

    def opening(self, history: Sequence[HistoryItem], *, first: bool) -> list[Frame]:
        """Nothing: the configuration, ``history`` and the greeting went into the call creation
        request (:meth:`~voxbridge.providers.ultravox_rest.UltravoxProvider.request_body`)."""
        return []

    def acknowledged(self, frame: Frame) -> list[Frame] | None:
        """Nothing waits for an acknowledgement (never called: see
        :attr:`awaits_acknowledgement`)."""
        return []

    def audio(self, payload: str) -> Frame:
        """Caller audio (base64 mu-law 8 kHz) as one binary frame of s16le PCM 8 kHz.

        Raises:
            RemoteProtocolError: ``payload`` is not base64 (Twilio's codec validates it first).
        """
        try:
            return ulaw_b64_to_pcm16(payload)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from None

    def decode(self, frame: Frame) -> ProviderEvent | None:
        """Map one Ultravox frame to a neutral event, or ``None`` for frames the bridge ignores.

        Raises:
            BadAudio: an audio frame that is not whole 16-bit samples (an odd length).
            RemoteProtocolError: malformed JSON, a message that is not an object with a string
                ``type``, a ``transcript`` with fields of the wrong type, or a
                ``client_tool_invocation`` without a string ``toolName`` and ``invocationId``
                and an object ``parameters``.
        """
        if isinstance(frame, bytes | bytearray | memoryview):
            pcm = bytes(frame)
            if len(pcm) % 2:
                raise BadAudio(
                    f"Ultravox audio frame of {len(pcm)} bytes is not whole 16-bit samples"
                )
            return AgentAudio(pcm16_to_ulaw(pcm)) if pcm else None
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"Ultravox sent malformed JSON: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise RemoteProtocolError("Ultravox data message is not a JSON object with a 'type'")
        kind = message["type"]
        if kind == "transcript":
            return self._transcript(message)
        if kind == "playback_clear_buffer":
            return SpeechStarted()
        if kind == "client_tool_invocation":
            return _tool_call(message)
        return None  # state, call_started, pong, debug, and types added later

    def _transcript(self, message: dict[str, Any]) -> Transcript | None:
        role, text, delta, final = (message.get(k) for k in ("role", "text", "delta", "final"))
        if not isinstance(role, str):
            raise RemoteProtocolError("Ultravox transcript without a string 'role'")
        if text is not None and not isinstance(text, str):
            raise RemoteProtocolError("Ultravox transcript 'text' must be a string or null")
        if delta is not None and not isinstance(delta, str):
            raise RemoteProtocolError("Ultravox transcript 'delta' must be a string or null")
        if final is not None and not isinstance(final, bool):
            raise RemoteProtocolError("Ultravox transcript 'final' must be a boolean")
        ordinal = message.get("ordinal")
        key: object = ordinal if isinstance(ordinal, int | str) else None
        _, so_far = self._pending.pop(key, (role, ""))
        if text is not None:  # the full text so far
            so_far = text
        elif delta is not None:  # an increment
            so_far += delta
        if not final:
            self._pending[key] = (role, so_far)
            if len(self._pending) > MAX_PENDING_TRANSCRIPTS:  # finals that never came
                del self._pending[next(iter(self._pending))]
            return None
        mapped = _ROLES.get(role)
        if mapped is None or not so_far.strip():
            return None
        return Transcript(mapped, so_far)

    def interrupt(self, truncations: Sequence[Truncation]) -> list[Frame]:
        """Nothing: Ultravox detects the barge-in and truncates the agent's turn on its side
        (its audio carries no item ids, so ``truncations`` is always empty)."""
        return []

    def tool_result(self, exchange: ToolExchange, *, known: bool) -> list[Frame]:
        """The result of a tool call, as a ``client_tool_result`` (``apps/datamessages.mdx``).

        Outcome ``ok``: ``{"type": "client_tool_result", "invocationId": <call_id>, "result":
        <output>, "responseType": "tool-response"}``; the agent then speaks (Ultravox's default
        ``agentReaction``). Any other outcome: ``errorType`` (``undefined`` for ``unknown_tool``,
        else ``implementation-error``) and ``errorMessage`` (the ``error`` text of the output)
        instead of ``result``, as the documentation asks.

        Not ``known`` (the session that asked was replaced): a resumed session is a new Ultravox
        call that never made that invocation and would refuse a result for it, so the exchange
        is told as a ``user_text_message``
        (:func:`~voxbridge.providers.events.tool_result_message`), which the agent answers; the
        sessions after that one have it in their ``initialMessages``.
        """
        if not known:
            text = tool_result_message(exchange)
            return [_json({"type": "user_text_message", "text": text, "urgency": "immediate"})]
        message: dict[str, Any] = {"type": "client_tool_result", "invocationId": exchange.call_id}
        if exchange.outcome == "ok":
            message |= {"result": exchange.output, "responseType": "tool-response"}
        else:
            message |= {
                "errorType": _ERROR_TYPES.get(exchange.outcome, "implementation-error"),
                "errorMessage": _error_text_of(exchange.output),
            }
        return [_json(message)]

    def dtmf(self, digits: str) -> list[Frame]:
        """Key presses as ``{"type": "user_text_message", "text": dtmf_message(digits),
        "urgency": "immediate"}`` (``apps/datamessages.mdx``: ``immediate`` interrupts the agent
        if it is speaking and starts a new generation at once)."""
        return [
            _json(
                {"type": "user_text_message", "text": dtmf_message(digits), "urgency": "immediate"}
            )
        ]

    keepalive = None  # no keepalive message: caller audio and WebSocket pings keep a call alive

    def closing(self) -> list[Frame]:
        """A ``hang_up`` data message, so Ultravox ends the call (and stops billing) at once."""
        return [json.dumps({"type": "hang_up", "message": self.hangup_message})]

    def flush(self) -> list[ProviderEvent]:
        """The utterances whose final message had not come, as the lines they were so far (in
        the order last heard from): the session ends, so they are over."""
        pending, self._pending = self._pending, {}
        lines: list[ProviderEvent] = []
        for role, text in pending.values():
            mapped = _ROLES.get(role)
            if mapped is not None and text.strip():
                lines.append(Transcript(mapped, text))
        return lines

    def close_reason(self, code: int) -> Reason:
        """What Ultravox closing the socket with ``code`` means: see :data:`CLOSE_REASONS`."""
        return CLOSE_REASONS.get(code, Reason.UPSTREAM_CLOSED)


def _tool_call(message: dict[str, Any]) -> ToolCall:
    """A ``client_tool_invocation`` as a :class:`ToolCall` (``arguments``: its ``parameters`` as
    compact JSON text)."""
    name, invocation, parameters = (
        message.get(k) for k in ("toolName", "invocationId", "parameters")
    )
    if not isinstance(name, str) or not name:
        raise RemoteProtocolError("Ultravox client_tool_invocation without a string 'toolName'")
    if not isinstance(invocation, str) or not invocation:
        raise RemoteProtocolError("Ultravox client_tool_invocation without a string 'invocationId'")
    if not isinstance(parameters, dict):
        raise RemoteProtocolError("Ultravox client_tool_invocation 'parameters' must be an object")
    try:
        arguments = orjson.dumps(parameters).decode()
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise RemoteProtocolError(f"Ultravox tool parameters cannot be re-encoded: {exc}") from None
    return ToolCall(invocation, name, arguments)


def _error_text_of(output: str) -> str:
    """The ``error`` text of a tool's error output (``{"error": "..."}``), else the output."""
    try:
        body = orjson.loads(output)
    except orjson.JSONDecodeError:
        return output
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else output


#: Ultravox's close codes that are not "the session dropped, resume it": 1000 is Ultravox ending
#: the call (the agent hung up, or ``maxDuration`` reached); 1008 (policy violation, RFC 6455
#: 7.4.1) refuses us, and retrying cannot help.
CLOSE_REASONS: dict[int, Reason] = {1000: Reason.AGENT_HANGUP, 1008: Reason.UPSTREAM_REJECTED}


def parse_duration(text: object) -> float | None:
    """Seconds of an Ultravox duration string (a protobuf ``Duration`` in JSON: ``"12.3s"``,
    ``"0s"``, ``"900s"``), or ``None`` for anything else (``null``, negative, malformed)."""
    if not isinstance(text, str):
        return None
    match = _DURATION.fullmatch(text)
    return float(text[:-1]) if match else None


if TYPE_CHECKING:  # mypy checks that the codec satisfies the protocol it implements

    def _conforms(codec: UltravoxCodec) -> ProviderCodec:
        return codec
