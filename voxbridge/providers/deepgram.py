"""Deepgram Voice Agent: one WebSocket, a ``Settings`` handshake, mu-law 8 kHz both ways.

The Voice Agent API (``wss://agent.deepgram.com/v1/agent/converse``, header ``Authorization:
Token <key>``) runs speech-to-text, an LLM and text-to-speech behind one socket. The first client
message is ``Settings``; it sets the audio formats, the three models (``agent.listen``,
``agent.think``, ``agent.speak``), the tools (``agent.think.functions``), the greeting and the
conversation so far (``agent.context.messages``). Shapes follow the installed ``deepgram-sdk``
(``deepgram/agent/v1/types``: ``AgentV1Settings``, ``ConversationHistoryMessage``,
``FunctionCallHistoryMessage``, ``AgentV1FunctionCallRequest``, ``AgentV1SendFunctionCallResponse``,
``AgentV1InjectUserMessage``, ``AgentV1KeepAlive``), which the tests use as their oracle.

Audio needs no conversion: :class:`DeepgramCodec` asks for ``mulaw`` at 8000 Hz in and out (output
``container: "none"``, raw samples), so Twilio's base64 payload, validated as strict base64, is sent
as its bytes in one binary frame, and each binary frame Deepgram sends is agent audio as it is.
Every byte is a valid mu-law sample, so there is no bad agent audio to reject, only empty frames
to skip. Text frames are JSON messages:

* ``ConversationText{role, content}`` is a final transcript line (``user`` -> ``caller``,
  ``assistant`` -> ``agent``).
* ``UserStartedSpeaking`` is the barge-in: :class:`~voxbridge.providers.events.SpeechStarted`, which
  makes the bridge clear Twilio's buffer. Deepgram stops the agent's turn itself and has no truncate
  message (its audio carries no item ids), so :meth:`DeepgramCodec.interrupt` sends nothing.
* ``AgentStartedSpeaking`` begins a new answer: ``ResponseStarted``.
* ``FunctionCallRequest{functions: [{id, name, arguments, client_side}]}``: the ``client_side``
  functions are ours to run (one: a ``ToolCall``; several: one ``ResponseDone`` that carries them);
  the others Deepgram runs itself. Each result goes back as ``FunctionCallResponse{id, name,
  content}``. A result for a session that has since been replaced (a resume, a recycle) cannot
  be: a new session knows no call id it did not make, and takes function calls only in its
  ``Settings``. It goes as ``InjectUserMessage`` instead (the call, its arguments and the result:
  :func:`~voxbridge.providers.events.tool_result_message`), which the agent answers, as it would
  have answered the ``FunctionCallResponse``; the sessions after that one have the exchange in
  their ``agent.context.messages``.
* ``Error{code, description}`` is a ``ProviderError``; ``Welcome``, ``SettingsApplied``,
  ``AgentThinking``, ``AgentAudioDone``, ``Warning``, ``History`` and types added later are ignored.

Key presses reach the model as ``InjectUserMessage{content}``. Deepgram closes a session that has
had no message for about 10 s and documents a ``KeepAlive`` message, every 8 s while no audio is
sent (WebSocket pings are not said to count): :attr:`DeepgramCodec.keepalive` declares it
(:data:`KEEPALIVE`), and the link sends it on that cadence. The caller's audio normally keeps the
session busy; the ``KeepAlive`` covers a carrier that pauses its audio. Deepgram ends every session
at 2 hours (resumed like any drop, or recycled earlier by the link). Deepgram reports no usage over
the socket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ..audio import b64_decode
from ..errors import Reason, RemoteProtocolError, SettingsError
from .base import Frame, Keepalive, Provider, ProviderCodec, ProviderSession, configured
from .endpoint import ProviderEndpoint, checked_ws_url
from .events import (
    AgentAudio,
    HistoryItem,
    ProviderError,
    ProviderEvent,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    dtmf_message,
    tool_result_message,
)
from .spec import ProviderSpec, option

if TYPE_CHECKING:
    from ..agents import AgentConfig
    from ..settings import Settings
    from ..tools import Tool

__all__ = [
    "CLOSE_REASONS",
    "DEEPGRAM_URL",
    "KEEPALIVE",
    "DeepgramCodec",
    "DeepgramProvider",
    "deepgram_endpoint",
]

DEEPGRAM_URL = "wss://agent.deepgram.com/v1/agent/converse"
LISTEN_MODEL = "nova-3"
THINK_PROVIDER = "open_ai"
THINK_MODEL = "gpt-4o-mini"
SPEAK_MODEL = "aura-2-thalia-en"
SAMPLE_RATE = 8000
#: Characters of provider text kept in an error event (a log line, never a carrier frame).
MAX_ERROR_TEXT = 500

_ROLES = {"user": "caller", "assistant": "agent"}
_HISTORY_ROLES = {"caller": "user", "agent": "assistant"}

#: Deepgram's close codes that are not "the session dropped, resume it" (Deepgram documents no
#: close codes for the agent API: this is voxbridge's reading of RFC 6455). 1008 (policy violation)
#: and 1003/1007 (data it cannot accept) mean our key, account or settings are refused, and a new
#: session would be refused again. Deepgram never hangs up a call on its own (ending the call is
#: a tool), so 1000 and everything else is a dropped session to resume.
CLOSE_REASONS: dict[int, Reason] = {
    1003: Reason.UPSTREAM_REJECTED,
    1007: Reason.UPSTREAM_REJECTED,
    1008: Reason.UPSTREAM_REJECTED,
}


def _json(message: Mapping[str, Any]) -> str:
    return orjson.dumps(message).decode()


#: ``KeepAlive`` every 8 s, the cadence Deepgram's "Agent Keep Alive" page gives (it closes a
#: session without a client message for about 10 s).
KEEPALIVE = Keepalive(_json({"type": "KeepAlive"}), 8.0)


class DeepgramCodec:
    """Encode caller audio and decode Deepgram Voice Agent frames for one session (sans-IO).

    Args:
        listen_model: the speech-to-text model (``agent.listen.provider``, Deepgram's).
        think_provider, think_model: the LLM (``agent.think.provider`` ``type`` and ``model``).
        speak_model: the voice (``agent.speak.provider``, a Deepgram Aura model).
        prompt: the system prompt (``agent.think.prompt``).
        tools: declared as ``agent.think.functions`` (client-side: no ``endpoint``).
        greeting: spoken by the agent at call start (``agent.greeting``); ``None`` or empty:
            the agent waits for the caller.
    """

    def __init__(
        self,
        *,
        listen_model: str = LISTEN_MODEL,
        think_provider: str = THINK_PROVIDER,
        think_model: str = THINK_MODEL,
        speak_model: str = SPEAK_MODEL,
        prompt: str = "",
        tools: Sequence[Tool] = (),
        greeting: str | None = None,
    ) -> None:
        self.listen_model = listen_model
        self.think_provider = think_provider
        self.think_model = think_model
        self.speak_model = speak_model
        self.prompt = prompt
        self.tools = tuple(tools)
        self.greeting = greeting

    def __repr__(self) -> str:
        return (
            f"DeepgramCodec(think={self.think_provider}/{self.think_model},"
            f" speak={self.speak_model!r}, tools={[t.name for t in self.tools]!r})"
        )

    def settings(self, history: Sequence[HistoryItem], *, first: bool) -> dict[str, Any]:
        """The ``Settings`` message for a session seeded with ``history``; the greeting only in
        the call's ``first`` session."""
        think: dict[str, Any] = {
            "provider": {"type": self.think_provider, "model": self.think_model},
            "prompt": self.prompt,
        }
        if self.tools:
            think["functions"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": _plain(tool.parameters),
                }
                for tool in self.tools
            ]
        agent: dict[str, Any] = {
            "listen": {"provider": {"type": "deepgram", "model": self.listen_model}},
            "think": think,
            "speak": {"provider": {"type": "deepgram", "model": self.speak_model}},
        }
        messages = _context_messages(history)
        if messages:
            agent["context"] = {"messages": messages}
        if first and self.greeting:
            agent["greeting"] = self.greeting
        return {
            "type": "Settings",
            "audio": {
                "input": {"encoding": "mulaw", "sample_rate": SAMPLE_RATE},
                "output": {"encoding": "mulaw", "sample_rate": SAMPLE_RATE, "container": "none"},
            },
            "agent": agent,
        }

    #: Audio may follow ``Settings`` at once: nothing to wait for.
    awaits_acknowledgement = False

    def opening(self, history: Sequence[HistoryItem], *, first: bool) -> list[Frame]:
        """One ``Settings`` message: the configuration, ``history`` as
        ``agent.context.messages`` and, in the call's ``first`` session only,
        ``agent.greeting``."""
        return [_json(self.settings(history, first=first))]

    def acknowledged(self, frame: Frame) -> list[Frame] | None:
        """Nothing waits for an acknowledgement (never called: see
        :attr:`awaits_acknowledgement`)."""
        return []

    def audio(self, payload: str) -> Frame:
        """Caller audio (base64 mu-law 8 kHz) as one binary frame of its mu-law bytes.

        Raises:
            RemoteProtocolError: ``payload`` is not strict base64.
        """
        try:
            return b64_decode(payload)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from None

    def decode(self, frame: Frame) -> ProviderEvent | None:
        """Map one Deepgram frame to a neutral event, or ``None`` for frames the bridge ignores.

        Raises:
            RemoteProtocolError: malformed JSON, a message that is not an object with a string
                ``type``, or a known message whose fields have the wrong types.
        """
        if isinstance(frame, bytes | bytearray | memoryview):
            audio = bytes(frame)
            return AgentAudio(audio) if audio else None
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"Deepgram sent malformed JSON: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise RemoteProtocolError("Deepgram message is not a JSON object with a 'type'")
        kind = message["type"]
        if kind == "ConversationText":
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise RemoteProtocolError("Deepgram ConversationText needs string role and content")
            mapped = _ROLES.get(role)
            return Transcript(mapped, content) if mapped and content.strip() else None
        if kind == "UserStartedSpeaking":
            return SpeechStarted()
        if kind == "AgentStartedSpeaking":
            return ResponseStarted()
        if kind == "FunctionCallRequest":
            return _function_calls(message)
        if kind == "Error":
            return _error(message)
        return None

    def interrupt(self, truncations: Sequence[Truncation]) -> list[Frame]:
        """Nothing: Deepgram stops the agent's turn itself and has no truncate message."""
        return []

    def tool_result(self, exchange: ToolExchange, *, known: bool) -> list[Frame]:
        """``FunctionCallResponse{id, name, content}`` (content: the tool's JSON output).

        Not ``known`` (the session that asked was replaced): ``InjectUserMessage`` with
        :func:`~voxbridge.providers.events.tool_result_message`. A new Deepgram session knows no
        call id it did not make, and takes function calls only in its ``Settings``; the agent
        answers the injected message.
        """
        if not known:
            content = tool_result_message(exchange)
            return [_json({"type": "InjectUserMessage", "content": content})]
        return [
            _json(
                {
                    "type": "FunctionCallResponse",
                    "id": exchange.call_id,
                    "name": exchange.name,
                    "content": exchange.output,
                }
            )
        ]

    def dtmf(self, digits: str) -> list[Frame]:
        """``InjectUserMessage{content: dtmf_message(digits)}``: the agent answers it."""
        return [_json({"type": "InjectUserMessage", "content": dtmf_message(digits)})]

    #: ``KeepAlive`` every 8 s (:data:`KEEPALIVE`), sent by the link's upkeep.
    keepalive = KEEPALIVE

    def closing(self) -> list[Frame]:
        """Nothing: Deepgram has no end-of-session message; closing the socket ends it."""
        return []

    def flush(self) -> list[ProviderEvent]:
        """Nothing is held: every ``ConversationText`` is a whole line, decoded as it comes."""
        return []

    def close_reason(self, code: int) -> Reason:
        """What Deepgram closing the socket with ``code`` means: see :data:`CLOSE_REASONS`."""
        return CLOSE_REASONS.get(code, Reason.UPSTREAM_CLOSED)


def _function_calls(message: dict[str, Any]) -> ToolCall | ResponseDone | None:
    functions = message.get("functions")
    if not isinstance(functions, list):
        raise RemoteProtocolError("Deepgram FunctionCallRequest 'functions' must be a list")
    calls: list[ToolCall] = []
    for function in functions:
        if not isinstance(function, dict):
            raise RemoteProtocolError("Deepgram FunctionCallRequest function is not an object")
        call_id, name, arguments, client_side = (
            function.get(k) for k in ("id", "name", "arguments", "client_side")
        )
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise RemoteProtocolError("Deepgram function call needs a string 'id' and 'name'")
        if not isinstance(arguments, str) or not isinstance(client_side, bool):
            raise RemoteProtocolError(
                "Deepgram function call needs string 'arguments' and boolean 'client_side'"
            )
        if client_side:  # server-side functions are Deepgram's to run
            calls.append(ToolCall(call_id, name, arguments or "{}"))
    if not calls:
        return None
    if len(calls) == 1:
        return calls[0]
    return ResponseDone(tool_calls=tuple(calls))


def _error(message: dict[str, Any]) -> ProviderError:
    code = message.get("code")
    # ``description`` in the current API; ``message`` in older servers.
    text = message.get("description", message.get("message"))
    if code is not None and not isinstance(code, str):
        raise RemoteProtocolError("Deepgram Error 'code' must be a string")
    if text is not None and not isinstance(text, str):
        raise RemoteProtocolError("Deepgram Error 'description' must be a string")
    return ProviderError((code or "unknown")[:64], (text or "")[:MAX_ERROR_TEXT])


def _context_messages(history: Sequence[HistoryItem]) -> list[dict[str, Any]]:
    """``history`` as ``agent.context.messages``: ``History`` messages, text
    (``ConversationHistoryMessage``) or a function call with its response
    (``FunctionCallHistoryMessage``); key presses as the user's :func:`dtmf_message`."""
    messages: list[dict[str, Any]] = []
    for item in history:
        if isinstance(item, ToolExchange):
            call = {
                "id": item.call_id,
                "name": item.name,
                "client_side": True,
                "arguments": item.arguments,
                "response": item.output,
            }
            messages.append({"type": "History", "function_calls": [call]})
        elif not item.text.strip():
            continue  # nothing was said
        elif item.role == "dtmf":
            messages.append({"type": "History", "role": "user", "content": dtmf_message(item.text)})
        elif item.role in _HISTORY_ROLES:
            messages.append(
                {"type": "History", "role": _HISTORY_ROLES[item.role], "content": item.text}
            )
    return messages


def _plain(value: Any) -> Any:
    """A JSON schema as plain dicts and lists (a tool's schema may use other mappings)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def deepgram_endpoint(api_key: str | None, url: str = DEEPGRAM_URL) -> ProviderEndpoint:
    """The Voice Agent endpoint at ``url`` (``--provider-url``), with ``Authorization: Token``.

    Raises:
        SettingsError: ``url`` is not ws:// or wss://.
    """
    headers = (("Authorization", f"Token {api_key}"),) if api_key else ()
    return ProviderEndpoint("deepgram", checked_ws_url(url), headers)


class DeepgramProvider:
    """Deepgram Voice Agent as a :class:`~voxbridge.providers.base.Provider`.

    Preparing a session does no I/O: the endpoint and a fresh codec, which sends the
    conversation so far in its ``Settings``.

    Args:
        endpoint: where to connect; see :func:`deepgram_endpoint`.
        listen_model, think_provider, think_model, speak_model, prompt, tools, greeting:
            see :class:`DeepgramCodec`.
    """

    name = "deepgram"

    def __init__(
        self,
        endpoint: ProviderEndpoint,
        *,
        listen_model: str = LISTEN_MODEL,
        think_provider: str = THINK_PROVIDER,
        think_model: str = THINK_MODEL,
        speak_model: str = SPEAK_MODEL,
        prompt: str = "",
        tools: Sequence[Tool] = (),
        greeting: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.listen_model = listen_model
        self.think_provider = think_provider
        self.think_model = think_model
        self.speak_model = speak_model
        self.prompt = prompt
        self.tools: tuple[Tool, ...] = tuple(tools)
        self.greeting = greeting

    def __repr__(self) -> str:
        return (
            f"DeepgramProvider({self.endpoint!r}, think={self.think_provider}/{self.think_model},"
            f" speak={self.speak_model!r}, tools={[t.name for t in self.tools]!r})"
        )

    def for_agent(self, agent: AgentConfig, tools: Sequence[Tool]) -> DeepgramProvider:
        """A copy for ``agent`` (:func:`~voxbridge.providers.base.configured`): its model is the
        think model, its voice the speak model, its instructions the prompt. No I/O."""
        return configured(
            self, agent, tools, model="think_model", voice="speak_model", instructions="prompt"
        )

    def codec(self) -> DeepgramCodec:
        """A fresh codec with this provider's settings."""
        return DeepgramCodec(
            listen_model=self.listen_model,
            think_provider=self.think_provider,
            think_model=self.think_model,
            speak_model=self.speak_model,
            prompt=self.prompt,
            tools=self.tools,
            greeting=self.greeting,
        )

    async def session(self, history: Sequence[HistoryItem], *, first: bool) -> ProviderSession:
        """The endpoint and a fresh codec (``history`` goes into the ``Settings``, and the
        greeting in the ``first`` session's)."""
        return ProviderSession(self.endpoint, self.codec())


if TYPE_CHECKING:  # mypy checks that both classes satisfy the protocols they implement

    def _conforms(
        codec: DeepgramCodec, provider: DeepgramProvider
    ) -> tuple[ProviderCodec, Provider]:
        return codec, provider


# --- declaration ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DeepgramSettings:
    """``--deepgram-*`` settings (the key: ``DEEPGRAM_API_KEY``, environment only). The voice
    (``--voice``) is the speak model."""

    api_key: str | None = option(None, "Deepgram key", secret=True)
    think_model: str = option(
        THINK_MODEL, "Deepgram Voice Agent: the LLM that thinks (think.provider.model)"
    )


def _build(settings: Settings, own: DeepgramSettings, echo_url: str | None) -> DeepgramProvider:
    if not own.api_key and settings.provider_url is None:
        raise SettingsError("provider deepgram needs DEEPGRAM_API_KEY")
    return DeepgramProvider(
        deepgram_endpoint(own.api_key, settings.provider_url or DEEPGRAM_URL),
        think_model=own.think_model,
        speak_model=settings.voice or SPEAK_MODEL,
        prompt=settings.agent_instructions(),
    )


SPEC = ProviderSpec(
    name="deepgram",
    settings=DeepgramSettings,
    build=_build,
    close_reasons=CLOSE_REASONS,
    codec=DeepgramCodec,
    key_variables=("DEEPGRAM_API_KEY",),
    endpoint="ws(s)://.../v1/agent/converse",
    fake="voxbridge.testing.fake_deepgram:FakeDeepgram",
    voice=f"{SPEAK_MODEL} (the speak model)",
)
