"""Ultravox over its server WebSocket medium: call creation over REST, then a sans-IO codec.

An Ultravox session has two steps. :meth:`UltravoxProvider.session` creates a *call* with
``POST {base_url}/calls`` (header ``X-API-Key``), asking for the ``serverWebSocket`` medium at 8 kHz
both ways; the answer carries a ``joinUrl``, a plain WebSocket URL that needs no credentials (the URL
itself is the capability), and the ``callId``. The conversation so far goes into the call as
``initialMessages``, so a resumed session remembers it; nothing is replayed over the socket.

Wire shapes follow Ultravox's documentation (repository ``fixie-ai/ultradox``): the data messages
in ``apps/datamessages.mdx``; the call creation and the call in its OpenAPI schema
(``api-reference/calls/calls-post.mdx`` and ``calls-get.mdx`` render
``https://api.ultravox.ai/api/schema/``: ``ultravox.v1.StartCallRequest``, ``SelectedTool``,
``BaseToolDefinition``, ``DynamicParameter``, ``Message``, ``FirstSpeakerSettings``, ``Call``);
client temporary tools in ``snippets/code/temp-tool-client.mdx``; tool timeouts in
``tools/async-tools.mdx``.

On the socket, binary frames are audio -- raw s16le mono PCM at the rates set at creation, both ways
-- and text frames are JSON data messages. Twilio speaks G.711 mu-law, so :class:`UltravoxCodec`
transcodes on the hot path (mu-law <-> PCM16 at the same 8 kHz rate: a table lookup per sample, no
resampling). Data messages map to neutral events:

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
* ``state``, ``call_started``, ``pong``, ``debug`` and types added later are ignored.

Key presses reach the model as a ``user_text_message`` (:meth:`UltravoxCodec.dtmf`). Ultravox bills
a call by its duration; :meth:`UltravoxProvider.billed_usage` reads it back (``billedDuration`` of
``GET {base_url}/calls/{callId}``) once a session is over.

Ultravox ends the call itself when the agent hangs up and closes the socket with 1000; any other close
is a dropped session the bridge may resume.

The API key lives only in :class:`UltravoxProvider` and in the request headers: it is kept out of
every ``repr``, log line and error message (a server that echoes it back is scrubbed too).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import orjson
import trio

from ..audio import pcm16_to_ulaw, ulaw_b64_to_pcm16
from ..deadlines import deadline
from ..errors import BadAudio, Reason, RemoteProtocolError, UpstreamConnectFailed
from .base import Frame, Provider, ProviderCodec, ProviderSession
from .endpoint import ProviderEndpoint
from .events import (
    AgentAudio,
    HistoryItem,
    ProviderEvent,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    Usage,
    dtmf_message,
)

if TYPE_CHECKING:
    from ..agents import AgentConfig
    from ..tools import Tool

__all__ = ["ULTRAVOX_URL", "UltravoxCodec", "UltravoxProvider", "parse_duration"]

log = logging.getLogger(__name__)

ULTRAVOX_URL = "https://api.ultravox.ai/api"
SAMPLE_RATE = 8000
#: Ultravox's recommendation for clients that handle ``playback_clear_buffer`` (default is 60 ms).
CLIENT_BUFFER_MS = 30000
#: Transcripts in flight (no ``final`` yet) kept per session; older ones are dropped beyond this.
MAX_PENDING_TRANSCRIPTS = 64
#: Characters of an error response quoted in an UpstreamConnectFailed detail.
ERROR_EXCERPT = 200
#: Ultravox waits at most this long for a tool (``tools/async-tools.mdx``: 2.5 s by default, 40 s
#: at most, set per tool as ``timeout``).
MAX_TOOL_TIMEOUT = 40.0
#: Ultravox is told to wait this much longer than voxbridge's own ``tool_timeout``, so that the
#: error result of a tool that overran it still reaches the model.
TOOL_TIMEOUT_MARGIN = 1.0

_ROLES = {"user": "caller", "agent": "agent"}
_MESSAGE_ROLES = {"caller": "MESSAGE_ROLE_USER", "agent": "MESSAGE_ROLE_AGENT"}
_IGNORED = frozenset({"state", "call_started", "pong", "debug"})
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
            say), for :meth:`UltravoxProvider.billed_usage` once the session is over.
    """

    def __init__(self, *, hangup_message: str = "", call_id: str | None = None) -> None:
        self.hangup_message = hangup_message
        self.call_id = call_id
        # ordinal -> (role, text so far) for utterances whose final message has not arrived
        self._pending: dict[object, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"UltravoxCodec(call_id={self.call_id!r}, pending={len(self._pending)})"

    def opening(self, history: Sequence[HistoryItem]) -> list[Frame]:
        """Nothing: the configuration, ``history`` and the greeting went into the call creation
        request (:meth:`UltravoxProvider.request_body`)."""
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
        if kind not in _IGNORED:
            log.debug("ignoring Ultravox data message %r", kind[:64])
        return None

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

        Not ``known`` (the session that asked was replaced): nothing. A resumed session is a new
        Ultravox call that never made that invocation and would refuse a result for it; the
        exchange reaches the model through the ``initialMessages`` of the next session.
        """
        if not known:
            return []
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

    def closing(self) -> list[Frame]:
        """A ``hang_up`` data message, so Ultravox ends the call (and stops billing) at once."""
        return [json.dumps({"type": "hang_up", "message": self.hangup_message})]

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

ClientFactory = Callable[[], httpx.AsyncClient]


def parse_duration(text: object) -> float | None:
    """Seconds of an Ultravox duration string (a protobuf ``Duration`` in JSON: ``"12.3s"``,
    ``"0s"``, ``"900s"``), or ``None`` for anything else (``null``, negative, malformed)."""
    if not isinstance(text, str):
        return None
    match = _DURATION.fullmatch(text)
    return float(text[:-1]) if match else None


class UltravoxProvider:
    """Ultravox: each session creates a call over REST, then joins it over a WebSocket.

    Args:
        api_key: sent as ``X-API-Key``; ``None`` sends no key (for a proxy that adds it).
        base_url: the REST API root (``https://api.ultravox.ai/api``); calls are created at
            ``{base_url}/calls``.
        voice: an Ultravox voice name or id; ``None`` leaves Ultravox's default.
        system_prompt: the agent's instructions.
        model: the Ultravox model; ``None`` leaves Ultravox's default.
        connect_timeout: seconds for the whole call creation request (and for
            :meth:`billed_usage`).
        client_factory: makes the ``httpx.AsyncClient`` for one request (entered and closed by
            the provider); for tests and for proxies or custom TLS. Default: a plain client.
        hangup_message: see :class:`UltravoxCodec`.
        tools: declared to the model as client temporary tools (:meth:`request_body`).
        greeting: what the agent says first at call start: ``None`` lets Ultravox's model greet
            (``firstSpeakerSettings`` ``{"agent": {}}``); ``""`` waits for the caller
            (``{"user": {}}``); any other text is spoken as is (``{"agent": {"text": ...}}``).
        tool_timeout: voxbridge's deadline for one tool call (seconds); each tool's Ultravox
            ``timeout`` is this plus :data:`TOOL_TIMEOUT_MARGIN`, at most 40 s. ``None`` leaves
            Ultravox's default (2.5 s).

    Raises:
        ValueError: ``base_url`` is not http(s), or two tools share a name.
    """

    name = "ultravox"

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str = ULTRAVOX_URL,
        voice: str | None,
        system_prompt: str,
        model: str | None = None,
        connect_timeout: float,
        client_factory: ClientFactory | None = None,
        hangup_message: str = "",
        tools: Sequence[Tool] = (),
        greeting: str | None = None,
        tool_timeout: float | None = None,
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"Ultravox base URL must be http:// or https://, got {base_url!r}")
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"Ultravox tool names must be unique, got {names!r}")
        self._api_key = api_key or None
        self.base_url = base_url.rstrip("/")
        self.voice = voice
        self.system_prompt = system_prompt
        self.model = model
        self.connect_timeout = connect_timeout
        self.hangup_message = hangup_message
        self.tools = tuple(tools)
        self.greeting = greeting
        self.tool_timeout = tool_timeout
        self._client_factory = client_factory

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return (
            f"UltravoxProvider(base_url={self.base_url!r}, voice={self.voice!r},"
            f" tools={[tool.name for tool in self.tools]!r}, api_key={key})"
        )

    @property
    def calls_url(self) -> str:
        return f"{self.base_url}/calls"

    def for_agent(self, agent: AgentConfig, tools: Sequence[Tool]) -> UltravoxProvider:
        """A new provider for ``agent``: its model, voice, instructions and greeting where they
        are not ``None`` (else this provider's), and ``tools`` in place of this provider's.
        Everything else (key, URL, timeouts, client factory) is kept. No I/O."""

        def pick(value: str | None, default: str | None) -> str | None:
            return default if value is None else value

        return UltravoxProvider(
            self._api_key,
            base_url=self.base_url,
            voice=pick(agent.voice, self.voice),
            system_prompt=self.system_prompt if agent.instructions is None else agent.instructions,
            model=pick(agent.model, self.model),
            connect_timeout=self.connect_timeout,
            client_factory=self._client_factory,
            hangup_message=self.hangup_message,
            tools=tools,
            greeting=pick(agent.greeting, self.greeting),
            tool_timeout=self.tool_timeout,
        )

    def request_body(self, history: Sequence[HistoryItem]) -> dict[str, Any]:
        """The ``StartCallRequest`` for a session seeded with ``history``.

        * ``selectedTools``: one ``{"temporaryTool": {...}}`` per tool, a client tool
          (``"client": {}``) whose ``dynamicParameters`` are the schema's ``properties``, each
          ``{"name", "location": "PARAMETER_LOCATION_BODY", "schema", "required"}`` (client tools
          take body parameters only); other schema keywords are not passed on.
        * ``initialMessages`` (a resume): caller and agent lines as ``MESSAGE_ROLE_USER`` /
          ``MESSAGE_ROLE_AGENT`` voice messages, key presses as a user text message
          (:func:`~voxbridge.providers.events.dtmf_message`), a tool exchange as a
          ``MESSAGE_ROLE_TOOL_CALL`` (``text``: the arguments) and a ``MESSAGE_ROLE_TOOL_RESULT``
          (``text``: the output), both with ``invocationId`` and ``toolName``.
        * ``firstSpeakerSettings``: on a resume the agent speaks first only to answer the
          caller's last words or a tool's result, else it waits; at call start it follows
          ``greeting``.
        """
        body: dict[str, Any] = {
            "systemPrompt": self.system_prompt,
            "medium": {
                "serverWebSocket": {
                    "inputSampleRate": SAMPLE_RATE,
                    "outputSampleRate": SAMPLE_RATE,
                    "clientBufferSizeMs": CLIENT_BUFFER_MS,
                }
            },
        }
        if self.voice:
            body["voice"] = self.voice
        if self.model:
            body["model"] = self.model
        if self.tools:
            body["selectedTools"] = [{"temporaryTool": self._tool(tool)} for tool in self.tools]
        messages = _initial_messages(history)
        if messages:
            body["initialMessages"] = messages
            # Resuming: the agent answers a caller's last words (or a tool's result), else it
            # waits for the caller (agent first would make it speak up unprompted mid-conversation).
            last = messages[-1]["role"]
            answers = last in ("MESSAGE_ROLE_USER", "MESSAGE_ROLE_TOOL_RESULT")
            body["firstSpeakerSettings"] = {"agent": {}} if answers else {"user": {}}
        elif self.greeting is None:
            body["firstSpeakerSettings"] = {"agent": {}}
        elif self.greeting:
            body["firstSpeakerSettings"] = {"agent": {"text": self.greeting}}
        else:
            body["firstSpeakerSettings"] = {"user": {}}
        return body

    def _tool(self, tool: Tool) -> dict[str, Any]:
        """One client ``BaseToolDefinition``."""
        properties = tool.parameters.get("properties")
        required = set(tool.required)
        parameters = [
            {
                "name": name,
                "location": "PARAMETER_LOCATION_BODY",
                "schema": _plain(schema),
                "required": name in required,
            }
            for name, schema in (properties.items() if isinstance(properties, Mapping) else ())
        ]
        definition: dict[str, Any] = {
            "modelToolName": tool.name,
            "description": tool.description,
            "dynamicParameters": parameters,
            "client": {},
        }
        if self.tool_timeout is not None:
            seconds = min(self.tool_timeout + TOOL_TIMEOUT_MARGIN, MAX_TOOL_TIMEOUT)
            definition["timeout"] = f"{round(seconds, 3):g}s"
        return definition

    async def session(self, history: Sequence[HistoryItem]) -> ProviderSession:
        """Create an Ultravox call seeded with ``history`` and return how to join it.

        The codec's ``call_id`` is the new call's ``callId`` (for :meth:`billed_usage`).

        Raises:
            UpstreamConnectFailed: the request fails, times out, or is
                refused (the detail has the HTTP status and Ultravox's error text, never the key).
        """
        body = self.request_body(history)
        # Resuming: no greeting prompt, or the agent would greet the caller again.
        params = {"enableGreetingPrompt": "false"} if "initialMessages" in body else {}
        slow = f"creating the call took longer than {self.connect_timeout:g} s"
        try:
            with deadline(self.connect_timeout, lambda waited: self._failed(slow)):
                async with self._client() as client:
                    response = await client.post(
                        self.calls_url, json=body, params=params, headers=self._headers()
                    )
        except httpx.TimeoutException:
            raise self._failed(slow) from None
        except httpx.HTTPError as exc:
            raise self._failed(f"creating the call failed: {type(exc).__name__}: {exc}") from None
        if response.status_code != 201:
            raise self._failed(
                f"creating the call was refused: HTTP {response.status_code}"
                f" {response.reason_phrase}: {_error_text(response)}",
                status=response.status_code,  # 401/403: a bad key stays bad, the link gives up
            )
        try:
            call = response.json()
        except ValueError:
            raise self._failed("call creation answered 201 with a body that is not JSON") from None
        join_url = call.get("joinUrl") if isinstance(call, dict) else None
        if not isinstance(join_url, str) or urlsplit(join_url).scheme not in ("ws", "wss"):
            raise self._failed("call creation answered 201 without a ws(s):// joinUrl")
        call_id = call.get("callId")
        call_id = call_id if isinstance(call_id, str) and call_id else None
        return ProviderSession(
            ProviderEndpoint(self.name, _with_api_version(join_url)),
            UltravoxCodec(hangup_message=self.hangup_message, call_id=call_id),
            usage=None if call_id is None else partial(self.billed_usage, call_id),
        )

    async def billed_usage(self, call_id: str) -> Usage | None:
        """What Ultravox billed for the call ``call_id``: ``Usage((("billed_seconds", s),))``.

        ``GET {base_url}/calls/{call_id}`` (``api-reference/calls/calls-get.mdx``), bounded by
        ``connect_timeout``; the call's ``billedDuration`` (``"12.3s"``, see
        :func:`parse_duration`) is ``null`` until Ultravox has billed the call (its
        ``billingStatus`` is then ``BILLING_STATUS_PENDING``), so ask once the session is over.

        Returns:
            The billed seconds, or ``None`` when they are absent or malformed, or the request
            fails, times out or is refused (logged as a warning, without the key).

        Never raises, except ``trio.Cancelled`` from an enclosing scope.
        """
        url = f"{self.calls_url}/{quote(call_id, safe='')}"
        response: httpx.Response | None = None
        problem = f"took longer than {self.connect_timeout:g} s"
        with trio.move_on_after(self.connect_timeout):
            try:
                async with self._client() as client:
                    response = await client.get(url, headers=self._headers())
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                problem = f"failed: {type(exc).__name__}: {exc}"
        if response is not None and response.status_code != 200:
            problem = f"was refused: HTTP {response.status_code}: {_error_text(response)}"
            response = None
        if response is None:
            log.warning("Ultravox billed usage of call %s %s", call_id, self._redacted(problem))
            return None
        try:
            call = response.json()
        except ValueError:
            call = None
        billed = call.get("billedDuration") if isinstance(call, dict) else None
        seconds = parse_duration(billed)
        if seconds is None:
            log.info("Ultravox call %s has no billed duration (%r)", call_id, str(billed)[:64])
            return None
        return Usage((("billed_seconds", seconds),))

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["X-API-Key"] = self._api_key
        return headers

    def _client(self) -> httpx.AsyncClient:
        if self._client_factory is not None:
            return self._client_factory()
        return httpx.AsyncClient(timeout=self.connect_timeout)

    def _redacted(self, detail: str) -> str:
        return detail.replace(self._api_key, "<redacted>") if self._api_key else detail

    def _failed(self, detail: str, *, status: int | None = None) -> UpstreamConnectFailed:
        return UpstreamConnectFailed(f"Ultravox: {self._redacted(detail)}", status=status)


def _initial_messages(history: Sequence[HistoryItem]) -> list[dict[str, Any]]:
    """``history`` as ``ultravox.v1.Message`` objects (see :meth:`UltravoxProvider.request_body`)."""
    messages: list[dict[str, Any]] = []
    for item in history:
        if isinstance(item, ToolExchange):
            ids = {"invocationId": item.call_id, "toolName": item.name}
            messages.append({"role": "MESSAGE_ROLE_TOOL_CALL", "text": item.arguments} | ids)
            messages.append({"role": "MESSAGE_ROLE_TOOL_RESULT", "text": item.output} | ids)
        elif item.role == "dtmf" and item.text:
            messages.append(
                {
                    "role": "MESSAGE_ROLE_USER",
                    "text": dtmf_message(item.text),
                    "medium": "MESSAGE_MEDIUM_TEXT",
                }
            )
        elif item.role in _MESSAGE_ROLES and item.text:
            messages.append(
                {
                    "role": _MESSAGE_ROLES[item.role],
                    "text": item.text,
                    "medium": "MESSAGE_MEDIUM_VOICE",
                }
            )
    return messages


def _plain(value: Any) -> Any:
    """A JSON schema as plain dicts and lists (a tool's schema may use other mappings)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _error_text(response: httpx.Response) -> str:
    """Ultravox's short error text: ``detail``/``error``/``message`` of a JSON body, else the body."""
    text = response.text
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        for field in ("detail", "error", "message"):
            value = body.get(field)
            if isinstance(value, str) and value:
                text = value
                break
    text = " ".join(text.split()) or "(empty body)"
    return text if len(text) <= ERROR_EXCERPT else text[: ERROR_EXCERPT - 3] + "..."


def _with_api_version(url: str) -> str:
    """``url`` with ``apiVersion=1`` in its query, as Ultravox's own WebSocket client joins."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "apiVersion" for key, _ in query):
        query.append(("apiVersion", "1"))
    return urlunsplit(parts._replace(query=urlencode(query)))


if TYPE_CHECKING:  # mypy checks that both classes satisfy the protocols they implement

    def _conforms(
        codec: UltravoxCodec, provider: UltravoxProvider
    ) -> tuple[ProviderCodec, Provider]:
        return codec, provider
