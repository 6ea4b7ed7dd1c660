"""The ASGI application: every carrier's routes, health, readiness, metrics, and the call per
WebSocket.

| route                          | what                                                              |
|--------------------------------|-------------------------------------------------------------------|
| ``POST /<carrier>/<webhook>``  | the carrier's answer that connects the call to its media route    |
| ``WS /<carrier>/media``        | one call: admission, then :class:`voxbridge.session.Call`         |
| ``GET /healthz``               | 200 while the process is alive                                    |
| ``GET /readyz``                | 200 when accepting calls; 503 while draining or at ``max_calls``  |
| ``GET /metrics``               | Prometheus text format                                            |

The carrier routes derive from the registry (:data:`voxbridge.carriers.registry.CARRIERS`): for
Twilio ``POST /twilio/voice`` (TwiML ``<Connect><Stream url="wss://.../twilio/media">``) and
``WS /twilio/media``; each call gets a fresh codec of its carrier (``CarrierSpec.codec``) and its
carrier's REST API.

Rejections before accept (bad signature, capacity, draining) are HTTP responses through the ASGI
``websocket.http.response`` extension, never an upgraded socket (docs/library-notes.md,
"Rejecting before accept").

With a carrier's credentials configured (Twilio: ``twilio_auth_token``), who may call is checked
in three places (``security``): the webhook's signature (403 before the answer), the media
upgrade's (403 before ``websocket.accept``: the carrier's signature, or, for a carrier that
cannot sign it, the per-call token in the stream URL's query string), and the per-call token in
the stream's start (``protocol_error`` before any provider session opens). A carrier not among
``--carriers`` is not served (404); one without credentials checks nothing, and on a non-loopback
bind without ``--insecure`` it is disabled (its routes answer 404). While another carrier's checks
are on, the streams of one that checks nothing wait for their start in a small pool of their own
(``UNAUTHENTICATED_STREAMS``, ``UNAUTHENTICATED_START_TIMEOUT``), outside ``max_calls``.
Whatever the settings, a second live stream for a call this process is already bridging is
refused (``protocol_error``, counted ``duplicate``).

The lifespan starts what the app needs for its whole life -- the call journal (SQLite, or
PostgreSQL for a ``postgresql://`` DSN, at ``settings.db``, unless one is passed in) and the
built-in echo agent when the provider is ``echo``
-- and at shutdown, once every call has been accounted for, flushes and closes the journal; so the
same app works under ``voxbridge serve`` and under ``hypercorn -k trio voxbridge.asgi:app``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from ..agents import AgentConfig, Agents, load_agents, load_tools
from ..carriers.base import CallRequest, CarrierRest, HttpAnswer, HttpRequest, StreamStarted
from ..carriers.registry import CARRIERS
from ..carriers.spec import CarrierSpec
from ..carriers.twilio_webhooks import connect_twiml
from ..echo_agent import EchoAgent
from ..errors import Disconnect, Reason, RemoteProtocolError
from ..journal import CallJournal, PostgresJournal, SQLiteJournal, journal_for
from ..metrics import Metrics
from ..providers.base import Provider
from ..providers.registry import provider_for
from ..session.call import Call
from ..session.registry import CallRegistry
from ..settings import Settings, SettingsError
from ..tools import BUILTIN_TOOLS, END_CALL, TRANSFER_CALL, Tool
from ..upstream import StreamConnector
from .asgi_carrier import AsgiCarrier
from .security import (
    MEDIA_PATH,
    TOKEN_PARAMETER,
    CallTokenError,
    CarrierAuth,
    carrier_enabled,
    stream_url,
    unauthenticated_warning,
    webhook_url,
)

__all__ = ["MEDIA_PATH", "CarrierRoute", "VoxbridgeApp"]

log = logging.getLogger("voxbridge.server")

Scope = dict[str, Any]
Receive = Any
Send = Any

MAX_BODY = 64 * 1024
#: At most this many streams of carriers that check nothing may wait for their start at once,
#: outside ``max_calls``; they get at most ``UNAUTHENTICATED_START_TIMEOUT`` seconds to start.
UNAUTHENTICATED_STREAMS = 8
UNAUTHENTICATED_START_TIMEOUT = 2.0
BODY_TIMEOUT = 10.0
JOURNAL_CLOSE_TIMEOUT = 10.0  # seconds to flush the journal at shutdown

#: The ``<Parameter>`` (and token claim) naming the call's agent.
AGENT_PARAMETER = "agent"
#: The token claim (or, without checks, the ``<Parameter>``) saying an answering machine took an
#: outbound call whose agent leaves a message.
MACHINE_PARAMETER = "voxbridge_machine"
#: ``AnsweredBy`` values that mean no person answered (answering machine detection), in Twilio's
#: words (:attr:`voxbridge.carriers.base.CallRequest.answered_by`).
MACHINE_ANSWERS = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"}
)


@attrs.frozen
class CarrierRoute:
    """One carrier as the app serves it.

    Attributes:
        spec: the carrier's registry entry (its routes, codec, webhooks and REST builders).
        auth: its checks and per-call tokens, from the settings.
        rest: its REST API (the built-in ``end_call``, ``transfer_call``); ``None`` without
            REST credentials.
        enabled: whether its routes serve calls (:func:`~voxbridge.server.security.carrier_enabled`);
            a disabled carrier's routes answer 404.
    """

    spec: CarrierSpec[Any]
    auth: CarrierAuth
    rest: CarrierRest | None
    enabled: bool


class VoxbridgeApp:
    """The voxbridge ASGI app.

    Args:
        settings: process settings.
        metrics: metric families (and their registry); a private registry if omitted.
        registry: the calls this app runs.
        provider: the provider; built from ``settings`` at startup if omitted.
        journal: where calls are recorded. If omitted, the app's own
            journal at ``settings.db`` (:class:`~voxbridge.journal.SQLiteJournal`, or
            :class:`~voxbridge.journal.PostgresJournal` for a ``postgresql://`` DSN): opened by :meth:`start`
            (marking calls a crash left live) and flushed and closed by :meth:`aclose` (the
            lifespan's shutdown does it). A journal passed in is the caller's to open and close.
        connect_stream: how calls open provider streams (tests inject memory streams).
        tools: tools every agent may be offered, with those of ``settings.tools_module``.
        agents: the named agents; read from ``settings.agents`` if omitted (or just the
            ``default`` agent, built from the settings).
        configure: the embedder's choice of agent per call (``configure(start)``, with the
            carrier's :class:`~voxbridge.carriers.base.StreamStarted`); it replaces the choice by
            called number and ``agent`` parameter.
        carriers: the carriers served, name -> spec (default: the registry,
            :data:`voxbridge.carriers.registry.CARRIERS`); each gets ``WS /<name>/media`` and
            ``POST /<name>/<webhook>``.
        carrier_rest: a carrier's REST API by carrier name (the built-in ``end_call`` and
            ``transfer_call``); a carrier not named here gets the one its spec builds from the
            settings' credentials (``None`` without them).

    Raises:
        SettingsError: the agents file or the tools module is bad, or a carrier's credentials
            are inconsistent (the message is one line).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        registry: CallRegistry | None = None,
        provider: Provider | None = None,
        journal: CallJournal | None = None,
        connect_stream: StreamConnector | None = None,
        tools: Sequence[Tool] = (),
        agents: Agents | None = None,
        configure: Callable[[StreamStarted], AgentConfig | None] | None = None,
        carriers: Mapping[str, CarrierSpec[Any]] | None = None,
        carrier_rest: Mapping[str, CarrierRest | None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.registry = registry if registry is not None else CallRegistry()
        self.provider = provider
        self.own_journal: SQLiteJournal | PostgresJournal | None = None
        if journal is None:
            journal = self.own_journal = journal_for(settings.db, metrics=self.metrics)
        self.journal: CallJournal = journal
        self.echo_agent: EchoAgent | None = None
        self.connect_stream = connect_stream
        self.draining = False
        self.metrics.drain_timeout.set(settings.drain_timeout)
        self.ready = trio.Event()
        self._admitting = 0  # WebSockets admitted but not registered as calls yet
        # Unauthenticated streams (a carrier that checks nothing) not yet started: their own pool.
        self._unauthenticated = 0
        self._unauthenticated_settings = attrs.evolve(
            settings, start_timeout=min(settings.start_timeout, UNAUTHENTICATED_START_TIMEOUT)
        )
        rest = dict(carrier_rest or {})
        #: Every registered carrier, by name: its checks, REST API and whether it is enabled.
        self.carriers: dict[str, CarrierRoute] = {}
        for name, spec in (CARRIERS if carriers is None else carriers).items():
            auth = CarrierAuth.from_settings(settings, spec)
            self.carriers[name] = CarrierRoute(
                spec=spec,
                auth=auth,
                rest=rest[name] if name in rest else spec.build_rest(settings),
                enabled=carrier_enabled(settings, auth.checks, name),
            )
        enabled = [route for route in self.carriers.values() if route.enabled]
        self._checked_carriers = any(route.auth.checks for route in enabled)
        self._media_routes = {route.spec.media_path: route for route in enabled}
        self._webhook_routes = {route.spec.webhook_path: route for route in enabled}
        # (carrier, call id) of every stream whose start was admitted, until its call has ended.
        self._live_calls: set[tuple[str, str]] = set()
        self.tools: list[Tool] = [*tools]
        if settings.tools_module:
            self.tools.extend(load_tools(settings.tools_module))
        known = {tool.name for tool in self.tools} | set(BUILTIN_TOOLS)
        if agents is None:
            agents = (
                load_agents(settings.agents, known_tools=known, settings=settings)
                if settings.agents
                else Agents.single(settings)
            )
        self.agents = agents
        self.configure = configure
        self.metrics.declare_tools(tool.name for tool in self.tools)
        self._providers: dict[str, Provider] = {}  # the provider of each name agents use

    def connection_contained(self, exc: BaseException) -> None:
        """hypercorn failed on one connection and voxbridge contained it (see ``containment``)."""
        self.metrics.connections_rejected.labels(reason="bad_request").inc()

    # --- ASGI entry point ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            message = await receive()
            assert message["type"] == "lifespan.startup"
            try:
                await self.start(nursery)
            except Exception as exc:
                await self.aclose()
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()  # lifespan.shutdown: calls are gone (hypercorn waits first)
            nursery.cancel_scope.cancel()
        await self.aclose()  # every call has been accounted for: flush and close the journal
        await send({"type": "lifespan.shutdown.complete"})

    async def start(self, nursery: trio.Nursery) -> None:
        """Open the app's own journal, start what the app needs (the echo agent for
        ``provider=echo``) and resolve the endpoint.

        Idempotent: ``voxbridge serve`` may have done it already.

        Raises:
            JournalError: the journal at ``settings.db`` cannot be opened.
        """
        await self.open_journal()
        if not self._providers:
            # Every provider an agent names, built once (a missing key fails here, at start).
            settings = self.settings
            names = {a.provider for a in (self.agents.default, *self.agents) if a.provider}
            names.discard(settings.provider)
            if self.provider is None:
                names.add(settings.provider)
            echo_url = None
            if "echo" in names and settings.provider_url is None:
                self.echo_agent = EchoAgent()
                echo_url = await nursery.start(self.echo_agent.serve)
            for name in sorted(names):
                self._providers[name] = provider_for(
                    attrs.evolve(settings, provider=name), echo_url=echo_url
                )
            if self.provider is None:
                self.provider = self._providers[settings.provider]
                log.info("provider %s", self.provider.name)
            self._providers[settings.provider] = self.provider
        if not self.ready.is_set():  # once, at the first start
            self._log_tools()
            self._log_carriers()
        self.ready.set()

    def _log_tools(self) -> None:
        """Say at start which tools agents may be offered, and why a built-in one is not."""
        served = [route for route in self.carriers.values() if route.enabled]
        without = [route.spec.name for route in served if route.rest is None]
        if "twilio" in without:
            log.info(
                "end_call and transfer_call are not offered on Twilio calls: no Twilio REST "
                "credentials (--twilio-account-sid with VOXBRIDGE_TWILIO_API_KEY and "
                "VOXBRIDGE_TWILIO_API_SECRET, or --twilio-auth-token)"
            )
        others = [name for name in without if name != "twilio"]
        if others:
            log.info(
                "end_call and transfer_call are not offered on %s calls: no REST credentials "
                "(docs/carriers.md)",
                ", ".join(others),
            )
        rests = [route.rest for route in served if route.rest is not None]
        targets = self.settings.transfer_to or any(a.transfer_to for a in self.agents)
        if rests and not targets:
            log.info("transfer_call is not offered: no --transfer-to (nor an agent's transfer_to)")
        names = [tool.name for tool in self.tools]
        if rests:
            names.append(END_CALL.name)
            if targets and any(rest.can_transfer for rest in rests):
                names.append(TRANSFER_CALL.name)
        log.info(
            "agents: %s; tools: %s",
            ", ".join(self.agents.names) or "default",
            ", ".join(names) or "none",
        )
        # A provider that cannot declare some tools to its model says why (GPT-Live without
        # --gpt-live-tools-model): warned once, here, not left to a model that never calls them.
        unheard = []
        for agent in self.agents:
            offered = names if agent.tools is None else [n for n in agent.tools if n in names]
            provider = self._providers.get(agent.provider or self.settings.provider)
            tools_warning = getattr(provider, "tools_warning", None)
            problem = tools_warning(offered) if tools_warning is not None else None
            if problem:
                unheard.append(f"agent {agent.name}: {problem}")
        if unheard:
            log.warning("tools the model is never offered: %s", "; ".join(unheard))

    def _log_carriers(self) -> None:
        """Say at start what each carrier checks, and which carriers are disabled."""
        for name, route in self.carriers.items():
            auth = route.auth
            if name not in self.settings.enabled_carriers:
                log.info(
                    "carrier %s is not served (--carriers %s): its routes answer 404",
                    name,
                    self.settings.carriers,
                )
            elif not route.enabled:
                log.warning(
                    "carrier %s is disabled: its credentials are not configured and --host %s is "
                    "not loopback (its routes %s and %s answer 404; docs/carriers.md)",
                    name,
                    self.settings.host,
                    route.spec.webhook_path,
                    route.spec.media_path,
                )
            elif name == "twilio":  # Twilio's lines, as operators' log searches know them
                if not auth.checks:
                    log.warning(unauthenticated_warning())
                else:
                    log.info(
                        "Twilio signatures and per-call tokens checked for %s (%d auth token(s))",
                        self.settings.public_url,
                        len(auth.webhooks.token_secrets),
                    )
            elif not auth.checks:
                log.warning(
                    "carrier %s checks nothing (no credentials configured): anyone who can reach "
                    "%s can open calls and paid provider sessions",
                    name,
                    route.spec.media_path,
                )
            else:
                log.info(
                    "carrier %s: signatures checked%s%s",
                    name,
                    " and per-call tokens issued" if auth.tokens is not None else "",
                    " (the media upgrade's in the stream URL)" if auth.upgrade_token else "",
                )

    def provider_for_agent(self, agent: AgentConfig) -> Provider:
        """The provider an agent names (``None``: the settings' provider).

        Every provider the agents file names was built at start; one that only an embedder's
        ``configure`` names is built now, once.

        Raises:
            Disconnect: ``UPSTREAM_CONNECT_FAILED``: that provider cannot be built (no key).
        """
        name = agent.provider or self.settings.provider
        provider = self._providers.get(name)
        if provider is None:
            try:
                provider = provider_for(attrs.evolve(self.settings, provider=name))
            except SettingsError as exc:
                raise Disconnect(Reason.UPSTREAM_CONNECT_FAILED, str(exc)) from None
            self._providers[name] = provider
        return provider

    async def open_journal(self) -> None:
        """Open the app's own journal (idempotent; nothing to do for a journal passed in).

        Opening marks the calls a previous run left ``live`` as ``crashed`` and starts the
        journal's writer thread (blocking I/O, run in a worker thread).

        Raises:
            JournalError: the journal at ``settings.db`` cannot be opened.
        """
        journal = self.own_journal
        if journal is not None and not journal.is_open:
            await trio.to_thread.run_sync(journal.open)
            log.info("journal %s", journal.path)

    async def aclose(self) -> None:
        """Flush and close the app's own journal (idempotent; a journal passed in is left alone).

        Call it once no call can end any more (after the drain and every call's teardown): later
        records are refused and counted. Shielded, so a cancelled host still flushes, and bounded
        by ``JOURNAL_CLOSE_TIMEOUT``.
        """
        journal = self.own_journal
        if journal is None or journal.closed:
            return
        with trio.CancelScope(shield=True) as bound:
            bound.deadline = trio.current_time() + JOURNAL_CLOSE_TIMEOUT + 1
            await trio.to_thread.run_sync(
                journal.close, JOURNAL_CLOSE_TIMEOUT, abandon_on_cancel=True
            )

    # --- calls --------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._media_routes.get(scope["path"])
        if route is None:
            await self._reject(send, 404, "bad_request", b"no WebSocket route here\n")
            return
        # Before anything else: an unauthenticated client learns nothing, not even capacity.
        auth = route.auth
        webhooks = auth.webhooks
        if webhooks.checks and not webhooks.upgrade_signed(
            self._request(scope, route.spec.media_path, "GET", websocket=True), now=time.time()
        ):
            await self._reject(send, 403, "bad_signature", b"bad or missing signature\n")
            return
        upgrade_claims: dict[str, Any] | None = None
        if auth.upgrade_token:
            upgrade_claims = auth.upgrade_token_valid(
                scope.get("query_string", b""), now=time.time()
            )
            if upgrade_claims is None:
                await self._reject(send, 403, "bad_signature", b"bad or missing signature\n")
                return
        if self.draining:
            await self._reject(send, 503, "draining", b"draining: not accepting calls\n")
            return
        # A stream nothing authenticated (its carrier checks nothing: loopback or --insecure)
        # while another carrier's streams are authenticated waits for its start in a small pool
        # of its own, with a short start deadline, so it cannot take the slots authenticated
        # streams need. (With no carrier checked there is nothing to keep slots for.)
        unauthenticated = not webhooks.checks and self._checked_carriers
        if self.provider is None or (
            self._unauthenticated >= UNAUTHENTICATED_STREAMS
            if unauthenticated
            else self._at_capacity()
        ):
            await self._reject(send, 503, "capacity", b"at capacity\n")
            return
        # The slot is taken now, before the awaits below: otherwise several upgrades arriving
        # together all pass the check before any of them is registered.
        self._admitting += 1
        waiting = unauthenticated  # holds an unauthenticated slot until its start is admitted
        if waiting:
            self._unauthenticated += 1
        live: tuple[str, str] | None = None  # the call held, once its start is admitted
        decided: Mapping[str, str] = {}  # what the webhook decided (agent, answering machine)

        def on_start(start: StreamStarted) -> None:
            nonlocal live, decided, waiting
            if upgrade_claims is not None and str(upgrade_claims.get("sub")) != start.call_id:
                raise Disconnect(
                    Reason.PROTOCOL_ERROR, "per-call token of the upgrade minted for another call"
                )
            if waiting:
                # it leaves its pool for the calls' slots: refused when the calls fill them
                if self._at_capacity():
                    self.metrics.connections_rejected.labels(reason="capacity").inc()
                    raise Disconnect(Reason.PROTOCOL_ERROR, "at capacity")
                self._unauthenticated -= 1
                waiting = False
            live, decided = self._admit_stream(call, start, route)

        def configure(start: StreamStarted) -> AgentConfig | None:
            call.answered_by_machine = decided.get(MACHINE_PARAMETER) == "1"
            name = decided.get(AGENT_PARAMETER)
            agent = self.agents.get(name) if name else self.agents.default
            if self.configure is not None:  # the embedder's choice, else the webhook's
                return self.configure(start) or agent or self.agents.default
            if agent is None:
                raise Disconnect(Reason.PROTOCOL_ERROR, f"no agent named {str(name)[:64]!r}")
            return agent

        built = False
        try:
            message = await receive()
            if message["type"] != "websocket.connect":
                return
            await send({"type": "websocket.accept"})
            call = Call(
                AsgiCarrier(receive, send),
                self.provider,
                settings=self._unauthenticated_settings if unauthenticated else self.settings,
                metrics=self.metrics,
                registry=self.registry,
                journal=self.journal,
                connect_stream=self.connect_stream,
                carrier_name=route.spec.name,
                codec=route.spec.codec(),
                on_start=on_start,
                tools=self.tools,
                configure=configure,
                providers=self.provider_for_agent,
                carrier_rest=route.rest,
            )
            built = True
        finally:
            self._admitting -= 1
            if not built and waiting:
                self._unauthenticated -= 1
        try:
            await call.run()  # registers the call before its first checkpoint: the slot stays taken
        finally:
            if waiting:
                self._unauthenticated -= 1
            if live is not None:
                self._live_calls.discard(live)

    def _admit_stream(
        self, call: Call, start: StreamStarted, route: CarrierRoute
    ) -> tuple[tuple[str, str], dict[str, str]]:
        """The call's ``on_start``: admit its stream, or refuse it before any provider session.

        Takes the per-call token out of the call's recorded custom parameters (a credential is
        not journalled), verifies it with the carrier's keys when it issues tokens, then refuses
        a call id that another live stream of the same carrier holds and registers this one.
        Synchronous, so the duplicate check and the registration happen with no checkpoint in
        between: two streams starting together cannot both pass.

        Returns:
            The ``(carrier, call id)`` now held (the caller releases it when the call has ended),
            and what the webhook decided for the call (``agent``, ``voxbridge_machine``): from the
            signed token when the carrier issues tokens, else from the stream's custom parameters
            (an operator's own TwiML may name the agent with ``<Parameter name="agent">``).

        Raises:
            Disconnect: ``PROTOCOL_ERROR`` for a missing or bad token, or a duplicate stream.
        """
        parameters = call.state.custom_parameters
        token = parameters.pop(TOKEN_PARAMETER, None)
        source: Mapping[str, object] = parameters
        tokens = route.auth.tokens
        if tokens is not None:
            try:
                source = tokens.verify(token, start.call_id, now=time.time())
            except CallTokenError as exc:
                raise Disconnect(Reason.PROTOCOL_ERROR, f"per-call token {exc}") from None
        decided = {
            key: value
            for key in (AGENT_PARAMETER, MACHINE_PARAMETER)
            if isinstance(value := source.get(key), str)
        }
        live = (route.spec.name, start.call_id)
        if live in self._live_calls:
            self.metrics.connections_rejected.labels(reason="duplicate").inc()
            raise Disconnect(Reason.PROTOCOL_ERROR, "another stream of this call is live")
        self._live_calls.add(live)
        return live, decided

    def _at_capacity(self) -> bool:
        """Whether the authenticated slots are full (streams waiting in the unauthenticated
        pool do not count)."""
        taken = len(self.registry) + self._admitting - self._unauthenticated
        return taken >= self.settings.max_calls

    async def _reject(self, send: Send, status: int, reason: str, body: bytes) -> None:
        """Refuse a WebSocket before accepting it, with an HTTP status and a short body."""
        self.metrics.connections_rejected.labels(reason=reason).inc()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})

    async def drain(self, grace: float | None = None) -> None:
        """Stop admitting calls, let running ones finish for ``grace`` seconds, end the rest.

        Calls still running at the deadline end with ``server_shutdown`` (close 1001) through
        their normal teardown; this returns when every call is gone.
        """
        self.draining = True
        self.metrics.draining.set(1)
        self.metrics.drain_started.set(time.time())
        grace = self.settings.drain_timeout if grace is None else grace
        self.metrics.drain_timeout.set(grace)  # the bound of this drain, if given another
        log.info("draining: %d calls, up to %gs", len(self.registry), grace)
        with trio.move_on_after(grace):
            await self.registry.wait_empty()
        ended = self.registry.end_all(Reason.SERVER_SHUTDOWN, "drain deadline reached")
        if ended:
            log.info("drain deadline: ended %d calls with server_shutdown", ended)
        with trio.move_on_after(self.settings.teardown_timeout + 1):
            await self.registry.wait_empty()

    # --- plain HTTP ---------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            await _respond(send, 200, b"ok\n")
        elif path == "/readyz":
            if self.draining:
                await _respond(send, 503, b"draining\n")
            elif self.provider is None:
                await _respond(send, 503, b"starting\n")
            elif self._at_capacity():
                await _respond(send, 503, b"at capacity\n")
            else:
                await _respond(send, 200, b"ready\n")
        elif path == "/metrics":
            await _respond(send, 200, self.metrics.render(), content_type=CONTENT_TYPE_LATEST)
        elif (route := self._webhook_routes.get(path)) is not None:
            await self._webhook(route, scope, method, receive, send)
        else:
            await _respond(send, 404, b"not found\n")

    async def _webhook(
        self, route: CarrierRoute, scope: Scope, method: str, receive: Receive, send: Send
    ) -> None:
        """``POST /<carrier>/<webhook>`` (Twilio's ``POST /twilio/voice``): the carrier's answer
        that connects the call to its media stream.

        With the carrier's checks on, the request must carry its signature (over the public
        webhook URL, for Twilio: 403 otherwise, counted ``bad_signature``), the request must name
        its call (400 otherwise), and the answer carries a per-call token bound to that call.
        The agent is the one named by ``?agent=`` (``voxbridge dial --agent``), else the one of
        the called number, else the default; an answering machine is hung up on or left a
        message, as the agent says.
        """
        if method != "POST":
            await _respond(send, 405, b"use POST\n", headers=[(b"allow", b"POST")])
            return
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, b"request body too large or too slow\n")
            return
        query = scope.get("query_string", b"")
        request = self._request(scope, route.spec.webhook_path, "POST", body=body)
        auth = route.auth
        webhooks = auth.webhooks
        if webhooks.checks and not webhooks.webhook_signed(request, now=time.time()):
            self.metrics.connections_rejected.labels(reason="bad_signature").inc()
            await _respond(send, 403, b"bad or missing signature\n")
            return
        try:
            call = webhooks.call(request)
        except RemoteProtocolError as exc:
            if webhooks.checks:  # a token must be bound to a call
                self.metrics.connections_rejected.labels(reason="bad_request").inc()
                await _respond(send, 400, f"{exc}\n".encode())
                return
            call = CallRequest(call_id="")
        named = _first(parse_qs(query.decode("latin-1")), AGENT_PARAMETER)
        agent = self.agents.get(named) if named else self.agents.for_number(call.to)
        if agent is None and named:
            self.metrics.connections_rejected.labels(reason="bad_request").inc()
            await _respond(send, 400, b"no such agent\n")
            return
        agent = agent or self.agents.default
        decided = {AGENT_PARAMETER: agent.name}
        if call.answered_by in MACHINE_ANSWERS:
            log.info(
                "call %s answered by %s: %s",
                call.call_id,
                call.answered_by,
                agent.on_machine,
                extra={"call_sid": call.call_id, "carrier": route.spec.name},
            )
            if agent.on_machine == "hangup":
                await self._answer(send, webhooks.hangup)
                return
            if agent.on_machine == "leave_message":
                decided[MACHINE_PARAMETER] = "1"
        parameters: dict[str, str] = {}
        if auth.tokens is not None:
            # signed, in the token; nothing in plain parameters
            token = auth.tokens.mint(call.call_id, now=time.time(), extra=decided)
            parameters[TOKEN_PARAMETER] = token
        elif decided != {AGENT_PARAMETER: self.agents.default.name}:
            parameters.update(decided)  # the default needs no parameter
        if route.spec.call_parameter and call.call_id:  # a stream that does not name its call
            parameters[route.spec.call_parameter] = call.call_id
        media_url = self.media_url(scope, route.spec.name)
        if auth.upgrade_token and TOKEN_PARAMETER in parameters:
            # the upgrade carries no signature of the carrier's: the token is its credential
            media_url += "?" + urlencode({TOKEN_PARAMETER: parameters[TOKEN_PARAMETER]})
        await self._answer(send, lambda: webhooks.connect(media_url, parameters))

    async def _answer(self, send: Send, build: Callable[[], HttpAnswer]) -> None:
        """Send the answer ``build`` makes; one it cannot make from the request's fields (a
        carrier limit, e.g. Vonage's 512-byte headers) is a 400, counted ``bad_request``."""
        try:
            answer = build()
        except ValueError as exc:
            self.metrics.connections_rejected.labels(reason="bad_request").inc()
            await _respond(send, 400, f"cannot answer this call: {str(exc)[:200]}\n".encode())
            return
        await _answer(send, answer)

    def _request(
        self, scope: Scope, path: str, method: str, *, body: bytes = b"", websocket: bool = False
    ) -> HttpRequest:
        """A request as the carrier checks see it: the public URL rebuilt from ``public_url``
        (never from ``Host``, when it is set) with the query string, the headers in lower case
        (a repeated header keeps its last value)."""
        query = scope.get("query_string", b"")
        base = self._base_url(scope)
        url = (stream_url if websocket else webhook_url)(base, query, path)
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers") or []
        }
        return HttpRequest(url=url, method=method, headers=headers, body=body)

    def _base_url(self, scope: Scope) -> str:
        """``public_url``; without it, ``http://`` and the request's ``Host`` (or the bound
        address): fine on a private network, which is why Twilio's checks require
        ``public_url``."""
        base = self.settings.public_url
        if base is None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not host:
                server = scope.get("server") or (self.settings.host, self.settings.port)
                host = f"{server[0]}:{server[1]}"
            base = f"http://{host}"
        return base

    def twiml(
        self, scope: Scope, token: str | None = None, parameters: Mapping[str, str] | None = None
    ) -> str:
        """The TwiML that connects a Twilio call to this server's media stream.

        Args:
            scope: the webhook request (its ``Host`` names the server when there is no
                ``public_url``).
            token: the per-call token, passed to the stream as the ``voxbridge_token``
                ``<Parameter>`` (Twilio hands it back in ``start.customParameters``).
            parameters: more ``<Parameter>``s (the agent, without checks).
        """
        named = dict(parameters or {})
        if token is not None:
            named[TOKEN_PARAMETER] = token
        return connect_twiml(self.media_url(scope), named)

    def media_url(self, scope: Scope, carrier: str = "twilio") -> str:
        """``wss://<public host>/<carrier>/media`` (``ws://`` when the public URL is plain http).

        Without ``public_url`` the host comes from the request (its ``Host`` header): fine on a
        private network, which is why signature checks require ``public_url``.
        """
        return stream_url(self._base_url(scope), path=self.carriers[carrier].spec.media_path)


def _first(values: Mapping[str, list[str]], name: str) -> str:
    """The first value of ``name`` in parsed form or query ``values``; ``""`` if absent."""
    found = values.get(name)
    return found[0] if found else ""


async def _read_body(receive: Receive) -> bytes | None:
    """A request body, bounded in size (``MAX_BODY``) and time (``BODY_TIMEOUT``); ``None`` if it
    is larger, slower, or the client left."""
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(BODY_TIMEOUT):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    return None


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _answer(send: Send, answer: HttpAnswer) -> None:
    """A carrier webhook's answer document, with status 200."""
    await _respond(send, 200, answer.body, content_type=answer.content_type)
