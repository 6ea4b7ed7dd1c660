"""Ultravox's REST API, the part voxbridge uses: the connect step of a session, and billed usage.

An Ultravox session has two steps. :meth:`UltravoxProvider.session` creates a *call* with
``POST {base_url}/calls`` (header ``X-API-Key``), asking for the ``serverWebSocket`` medium at 8 kHz
both ways; the answer carries a ``joinUrl``, a plain WebSocket URL that needs no credentials (the URL
itself is the capability), and the ``callId``. The conversation so far goes into the call as
``initialMessages``, so a resumed session remembers it; nothing is replayed over the socket. The
bridge then joins the ``joinUrl`` and speaks through the sans-IO
:class:`~voxbridge.providers.ultravox.UltravoxCodec`, which documents the socket.

Wire shapes follow Ultravox's documentation (repository ``fixie-ai/ultradox``): the call creation
and the call in its OpenAPI schema (``api-reference/calls/calls-post.mdx`` and ``calls-get.mdx``
render ``https://api.ultravox.ai/api/schema/``: ``ultravox.v1.StartCallRequest``, ``SelectedTool``,
``BaseToolDefinition``, ``DynamicParameter``, ``Message``, ``FirstSpeakerSettings``, ``Call``);
client temporary tools in ``snippets/code/temp-tool-client.mdx``; tool timeouts in
``tools/async-tools.mdx``.

Ultravox bills a call by its duration; :meth:`UltravoxProvider.billed_usage` reads it back
(``billedDuration`` of ``GET {base_url}/calls/{callId}``) once a session is over.

Requests go over **httpx** (it runs under trio); each is bounded by ``connect_timeout``. The API key
lives only in :class:`UltravoxProvider` and in the request headers: it is kept out of every
``repr``, log line and error message (a server that echoes it back is scrubbed too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs
import httpx
import trio

from ..deadlines import deadline
from ..errors import SettingsError, UpstreamConnectFailed
from .base import Provider, ProviderSession, configured
from .endpoint import URL_SETTING, ProviderEndpoint, url_problem
from .events import HistoryItem, ToolExchange, Usage, dtmf_message
from .spec import ProviderSpec, option
from .ultravox import CLOSE_REASONS, SAMPLE_RATE, UltravoxCodec, parse_duration

if TYPE_CHECKING:
    from ..agents import AgentConfig
    from ..settings import Settings
    from ..tools import Tool

__all__ = ["ULTRAVOX_URL", "UltravoxProvider"]

log = logging.getLogger(__name__)

ULTRAVOX_URL = "https://api.ultravox.ai/api"
#: Ultravox's recommendation for clients that handle ``playback_clear_buffer`` (default is 60 ms).
CLIENT_BUFFER_MS = 30000
#: Characters of an error response quoted in an UpstreamConnectFailed detail.
ERROR_EXCERPT = 200
#: The usage kind Ultravox reports (``voxbridge_provider_usage_total{kind}``): billed seconds.
BILLED_SECONDS = "billed_seconds"
#: Ultravox waits at most this long for a tool (``tools/async-tools.mdx``: 2.5 s by default, 40 s
#: at most, set per tool as ``timeout``).
MAX_TOOL_TIMEOUT = 40.0
#: Ultravox is told to wait this much longer than voxbridge's own ``tool_timeout``, so that the
#: error result of a tool that overran it still reaches the model.
TOOL_TIMEOUT_MARGIN = 1.0

_MESSAGE_ROLES = {"caller": "MESSAGE_ROLE_USER", "agent": "MESSAGE_ROLE_AGENT"}

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
        """A copy for ``agent`` (:func:`~voxbridge.providers.base.configured`): its instructions
        are the system prompt; key, URL, timeouts and client factory are kept. No I/O.

        Raises:
            ValueError: two tools share a name.
        """
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"Ultravox tool names must be unique, got {names!r}")
        return configured(self, agent, tools, instructions="system_prompt")

    def request_body(self, history: Sequence[HistoryItem], *, first: bool) -> dict[str, Any]:
        """The ``StartCallRequest`` for a session seeded with ``history`` (``first``: the call's
        first session).

        * ``selectedTools``: one ``{"temporaryTool": {...}}`` per tool, a client tool
          (``"client": {}``) whose ``dynamicParameters`` are the schema's ``properties``, each
          ``{"name", "location": "PARAMETER_LOCATION_BODY", "schema", "required"}`` (client tools
          take body parameters only); other schema keywords are not passed on.
        * ``initialMessages`` (a resume): caller and agent lines as ``MESSAGE_ROLE_USER`` /
          ``MESSAGE_ROLE_AGENT`` voice messages, key presses as a user text message
          (:func:`~voxbridge.providers.events.dtmf_message`), a tool exchange as a
          ``MESSAGE_ROLE_TOOL_CALL`` (``text``: the arguments) and a ``MESSAGE_ROLE_TOOL_RESULT``
          (``text``: the output), both with ``invocationId`` and ``toolName``.
        * ``firstSpeakerSettings``: on a resume (not ``first``) the agent speaks first only to
          answer the caller's last words or a tool's result, else it waits (never the greeting
          again, even with nothing to replay); in the first session it follows ``greeting``.
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
        if not first:
            # Resuming: the agent answers a caller's last words (or a tool's result), else it
            # waits for the caller (agent first would make it speak up unprompted mid-conversation).
            last = messages[-1]["role"] if messages else None
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

    async def session(self, history: Sequence[HistoryItem], *, first: bool) -> ProviderSession:
        """Create an Ultravox call seeded with ``history`` and return how to join it (the
        greeting only in the ``first`` session).

        The codec's ``call_id`` is the new call's ``callId`` (for :meth:`billed_usage`).

        Raises:
            UpstreamConnectFailed: the request fails, times out, or is
                refused (the detail has the HTTP status and Ultravox's error text, never the key).
        """
        body = self.request_body(history, first=first)
        # Resuming: no greeting prompt, or the agent would greet the caller again.
        params = {} if first else {"enableGreetingPrompt": "false"}
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
        return Usage(((BILLED_SECONDS, seconds),))

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


if TYPE_CHECKING:  # mypy checks that the provider satisfies the protocol it implements

    def _conforms(provider: UltravoxProvider) -> Provider:
        return provider


# --- declaration ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class UltravoxSettings:
    """``--ultravox-*`` settings (the key: ``ULTRAVOX_API_KEY``, environment only)."""

    api_key: str | None = option(None, "Ultravox key", secret=True)
    model: str | None = option(None, "Ultravox model (default: Ultravox's own default)")


def _build(settings: Settings, own: UltravoxSettings, echo_url: str | None) -> UltravoxProvider:
    if not own.api_key and settings.provider_url is None:
        raise SettingsError("provider ultravox needs ULTRAVOX_API_KEY")
    base = settings.provider_url or ULTRAVOX_URL
    problem = url_problem(base, ("http", "https"))
    if problem:
        raise SettingsError(
            f"{URL_SETTING} for ultravox is its REST base, http(s)://.../api: {problem}"
        )
    return UltravoxProvider(
        own.api_key,
        base_url=base,
        voice=settings.voice,
        system_prompt=settings.agent_instructions(),
        model=own.model,
        connect_timeout=settings.connect_timeout,
        tool_timeout=settings.tool_timeout,
    )


SPEC = ProviderSpec(
    name="ultravox",
    settings=UltravoxSettings,
    build=_build,
    close_reasons=CLOSE_REASONS,
    codec=UltravoxCodec,
    key_variables=("ULTRAVOX_API_KEY",),
    usage_kinds=(BILLED_SECONDS,),
    endpoint="REST base http(s)://.../api",
    fake="voxbridge.testing.fake_ultravox:FakeUltravox",
)
