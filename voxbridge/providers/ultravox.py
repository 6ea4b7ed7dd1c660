"""Ultravox over its server WebSocket medium: call creation over REST, then a sans-IO codec.

An Ultravox session has two steps. :meth:`UltravoxProvider.session` creates a *call* with
``POST {base_url}/calls`` (header ``X-API-Key``), asking for the ``serverWebSocket`` medium at 8 kHz
both ways; the answer carries a ``joinUrl``, a plain WebSocket URL that needs no credentials (the URL
itself is the capability). The conversation so far goes into the call as ``initialMessages``, so a
resumed session remembers it; nothing is replayed over the socket.

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
* Agent audio must be whole 16-bit samples; an odd-length frame raises
  :class:`~voxbridge.errors.BadAudio` and the call drops that frame alone.
* ``state``, ``call_started``, ``pong``, ``debug`` and types added later are ignored.

Ultravox ends the call itself when the agent hangs up and closes the socket with 1000; any other close
is a dropped session the bridge may resume.

The API key lives only in :class:`UltravoxProvider` and in the request headers: it is kept out of
every ``repr``, log line and error message (a server that echoes it back is scrubbed too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import orjson

from ..audio import pcm16_to_ulaw, ulaw_b64_to_pcm16
from ..deadlines import deadline
from ..errors import BadAudio, Reason, RemoteProtocolError, UpstreamConnectFailed
from .base import Frame, Provider, ProviderCodec, ProviderSession
from .endpoint import ProviderEndpoint
from .events import AgentAudio, ProviderEvent, SpeechStarted, Transcript, Truncation

__all__ = ["ULTRAVOX_URL", "UltravoxCodec", "UltravoxProvider"]

log = logging.getLogger(__name__)

ULTRAVOX_URL = "https://api.ultravox.ai/api"
SAMPLE_RATE = 8000
#: Ultravox's recommendation for clients that handle ``playback_clear_buffer`` (default is 60 ms).
CLIENT_BUFFER_MS = 30000
#: Transcripts in flight (no ``final`` yet) kept per session; older ones are dropped beyond this.
MAX_PENDING_TRANSCRIPTS = 64
#: Characters of an error response quoted in an UpstreamConnectFailed detail.
ERROR_EXCERPT = 200

_ROLES = {"user": "caller", "agent": "agent"}
_MESSAGE_ROLES = {"caller": "MESSAGE_ROLE_USER", "agent": "MESSAGE_ROLE_AGENT"}
_IGNORED = frozenset({"state", "call_started", "pong", "debug"})


class UltravoxCodec:
    """Encode caller audio and decode Ultravox frames for one session (sans-IO, one per session).

    Args:
        hangup_message: what the agent says before ending the call when the bridge hangs up
            (empty: hang up at once, which is right when the caller has already gone).
    """

    def __init__(self, *, hangup_message: str = "") -> None:
        self.hangup_message = hangup_message
        # ordinal -> (role, text so far) for utterances whose final message has not arrived
        self._pending: dict[object, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"UltravoxCodec(pending={len(self._pending)})"

    def opening(self, history: Sequence[Transcript]) -> list[Frame]:
        """Nothing: the configuration and ``history`` went into the call creation request."""
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
                ``type``, or a ``transcript`` with fields of the wrong type.
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

    def closing(self) -> list[Frame]:
        """A ``hang_up`` data message, so Ultravox ends the call (and stops billing) at once."""
        return [json.dumps({"type": "hang_up", "message": self.hangup_message})]

    def close_reason(self, code: int) -> Reason:
        """What Ultravox closing the socket with ``code`` means: see :data:`CLOSE_REASONS`."""
        return CLOSE_REASONS.get(code, Reason.UPSTREAM_CLOSED)


#: Ultravox's close codes that are not "the session dropped, resume it": 1000 is Ultravox ending
#: the call (the agent hung up, or ``maxDuration`` reached); 1008 (policy violation, RFC 6455
#: 7.4.1) refuses us, and retrying cannot help.
CLOSE_REASONS: dict[int, Reason] = {1000: Reason.AGENT_HANGUP, 1008: Reason.UPSTREAM_REJECTED}

ClientFactory = Callable[[], httpx.AsyncClient]


class UltravoxProvider:
    """Ultravox: each session creates a call over REST, then joins it over a WebSocket.

    Args:
        api_key: sent as ``X-API-Key``; ``None`` sends no key (for a proxy that adds it).
        base_url: the REST API root (``https://api.ultravox.ai/api``); calls are created at
            ``{base_url}/calls``.
        voice: an Ultravox voice name or id; ``None`` leaves Ultravox's default.
        system_prompt: the agent's instructions.
        model: the Ultravox model; ``None`` leaves Ultravox's default.
        connect_timeout: seconds for the whole call creation request.
        client_factory: makes the ``httpx.AsyncClient`` for one request (entered and closed by
            the provider); for tests and for proxies or custom TLS. Default: a plain client.
        hangup_message: see :class:`UltravoxCodec`.
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
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"Ultravox base URL must be http:// or https://, got {base_url!r}")
        self._api_key = api_key or None
        self.base_url = base_url.rstrip("/")
        self.voice = voice
        self.system_prompt = system_prompt
        self.model = model
        self.connect_timeout = connect_timeout
        self.hangup_message = hangup_message
        self._client_factory = client_factory

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return f"UltravoxProvider(base_url={self.base_url!r}, voice={self.voice!r}, api_key={key})"

    @property
    def calls_url(self) -> str:
        return f"{self.base_url}/calls"

    def request_body(self, history: Sequence[Transcript]) -> dict[str, Any]:
        """The ``StartCallRequest`` for a session seeded with ``history``."""
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
        messages = [
            {"role": _MESSAGE_ROLES[line.role], "text": line.text, "medium": "MESSAGE_MEDIUM_VOICE"}
            for line in history
            if line.role in _MESSAGE_ROLES and line.text
        ]
        if messages:
            body["initialMessages"] = messages
            # Resuming: the agent answers a caller's last words, else it waits for the caller
            # (the default, agent first, would make it speak up unprompted mid-conversation).
            last = messages[-1]["role"]
            body["firstSpeakerSettings"] = (
                {"agent": {}} if last == "MESSAGE_ROLE_USER" else {"user": {}}
            )
        else:
            body["firstSpeakerSettings"] = {"agent": {}}
        return body

    async def session(self, history: Sequence[Transcript]) -> ProviderSession:
        """Create an Ultravox call seeded with ``history`` and return how to join it.

        Raises:
            UpstreamConnectFailed: the request fails, times out, or is
                refused (the detail has the HTTP status and Ultravox's error text, never the key).
        """
        body = self.request_body(history)
        # Resuming: no greeting prompt, or the agent would greet the caller again.
        params = {"enableGreetingPrompt": "false"} if "initialMessages" in body else {}
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["X-API-Key"] = self._api_key
        slow = f"creating the call took longer than {self.connect_timeout:g} s"
        try:
            with deadline(self.connect_timeout, lambda waited: self._failed(slow)):
                async with self._client() as client:
                    response = await client.post(
                        self.calls_url, json=body, params=params, headers=headers
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
        return ProviderSession(
            ProviderEndpoint(self.name, _with_api_version(join_url)),
            UltravoxCodec(hangup_message=self.hangup_message),
        )

    def _client(self) -> httpx.AsyncClient:
        if self._client_factory is not None:
            return self._client_factory()
        return httpx.AsyncClient(timeout=self.connect_timeout)

    def _failed(self, detail: str, *, status: int | None = None) -> UpstreamConnectFailed:
        if self._api_key:
            detail = detail.replace(self._api_key, "<redacted>")
        return UpstreamConnectFailed(f"Ultravox: {detail}", status=status)


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
