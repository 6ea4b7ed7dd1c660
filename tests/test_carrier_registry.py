"""The carrier registry: one line per carrier, and everything that names carriers derives from it.

A made-up carrier (``tests/carrierkit.py``) registered for one test gets its routes, its settings
flags and variables, its metric labels and its ``--carrier`` choice, and is served end to end by a
real server (hypercorn on port 0, loopback). The security rule for a carrier without credentials
(disabled beyond loopback, its routes 404, said at start) is checked on the app itself with
``host=0.0.0.0`` settings (nothing is bound), and :func:`check_exposure` refuses a public bind
only when no carrier has credentials.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import attrs
import httpx
import pytest
import trio
from carrierkit import TOKEN_HEADER, FakeSettings, FakeWire, registered
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from rich.console import Console
from test_e2e_server import raw_websocket, running, scrape
from trio_websocket import ConnectionRejected

from voxbridge.carriers.base import HttpAnswer
from voxbridge.carriers.registry import CARRIERS, SPECS
from voxbridge.carriers.twilio_webhooks import TwilioWebhooks
from voxbridge.cli import _settings, build_parser
from voxbridge.demo import run_demo
from voxbridge.journal import MemoryJournal
from voxbridge.metrics import PROVIDERS, Metrics
from voxbridge.server.app import VoxbridgeApp
from voxbridge.server.security import CallTokens, check_exposure
from voxbridge.settings import Settings, SettingsError
from voxbridge.testing import simulate_call
from voxbridge.testing.carrier import TwilioWire, wire_for

BUDGET = 20.0  # seconds of real time per end-to-end test
TOKEN = secrets.token_hex(16)
TWILIO_TOKEN = secrets.token_hex(16)
PUBLIC = "https://voice.example.test"
ECHO = {"provider": "echo", "provider_url": "ws://127.0.0.1:9/v1/realtime"}  # never dialled


#: The registry's own lines (a test's ``registered`` fake comes on top).
REGISTERED = [spec.name for spec in SPECS]


def new_call_id() -> str:
    return "CA" + secrets.token_hex(16)


# --- the registry itself --------------------------------------------------------------------------


def test_twilio_is_the_first_line_with_its_contract_routes() -> None:
    assert SPECS[0].name == "twilio"
    assert list(CARRIERS) == [spec.name for spec in SPECS]
    twilio = CARRIERS["twilio"]
    assert (twilio.webhook_path, twilio.media_path) == ("/twilio/voice", "/twilio/media")
    assert twilio.simulator == "voxbridge.testing.carrier:TwilioWire"
    assert isinstance(twilio.build_webhooks(Settings()), TwilioWebhooks)
    assert twilio.build_rest(Settings()) is None  # no REST credentials
    routes = [path for spec in SPECS for path in (spec.webhook_path, spec.media_path)]
    assert len(routes) == len(set(routes))  # no two carriers share a route
    assert all(spec.name == spec.name.lower() for spec in SPECS)


def test_wire_for_builds_a_fresh_wire_of_the_class_the_spec_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = wire_for("twilio"), wire_for("twilio")
    assert type(first) is TwilioWire and first is not second  # one wire per call
    registered(monkeypatch)
    assert type(wire_for("fake")) is FakeWire
    with pytest.raises(ValueError, match="unknown carrier 'nope'"):
        wire_for("nope")


# --- what a registered carrier gets ---------------------------------------------------------------


def test_a_registered_carrier_gets_its_settings_flags_and_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "fake" not in Settings().carrier_settings
    registered(monkeypatch)
    options = {option.name: option for option in Settings.options() if option.spec.name == "fake"}
    assert set(options) == {"fake_token", "fake_region"}
    assert options["fake_region"].flag == "--fake-region"
    assert options["fake_token"].variables == ("VOXBRIDGE_FAKE_TOKEN",)

    loaded = Settings.from_env({"VOXBRIDGE_FAKE_TOKEN": TOKEN, "VOXBRIDGE_FAKE_REGION": "east"})
    assert loaded.carrier_settings["fake"] == FakeSettings(token=TOKEN, region="east")
    assert TOKEN not in repr(loaded)
    assert Settings().carrier_settings["fake"] == FakeSettings()
    assert Settings().for_carrier("fake", region="west").carrier_settings["fake"].region == "west"

    # the flag on the command line; the secret is environment only
    args = build_parser().parse_args(["serve", "--fake-region", "north"])
    assert _settings(args).carrier_settings["fake"].region == "north"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--fake-token", TOKEN])
    with pytest.raises(SettingsError, match="--fake-colour"):
        Settings(carrier_settings={"fake": {"colour": "red"}})
    with pytest.raises(SettingsError, match="unknown 'nope'"):
        Settings(carrier_settings={"nope": {}})


def test_a_registered_carrier_gets_its_metric_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    def carriers_started(metrics: Metrics) -> set[str]:
        [family] = [f for f in metrics.registry.collect() if f.name == "voxbridge_calls_started"]
        labels = {(s.labels["carrier"], s.labels["provider"]) for s in family.samples}
        assert labels == {(c, p) for c in {c for c, _ in labels} for p in PROVIDERS}
        return {carrier for carrier, _ in labels}

    assert carriers_started(Metrics()) == set(CARRIERS)
    registered(monkeypatch)
    assert carriers_started(Metrics()) == {*REGISTERED, "fake"}


def test_call_and_demo_take_the_registered_carriers(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "ws://127.0.0.1:8080/twilio/media"
    assert build_parser().parse_args(["call", url]).carrier == "twilio"
    assert build_parser().parse_args(["demo"]).carrier == "twilio"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["call", "--carrier", "fake", url])
    registered(monkeypatch)
    assert build_parser().parse_args(["call", "--carrier", "fake", url]).carrier == "fake"
    assert build_parser().parse_args(["demo", "--carrier", "fake"]).carrier == "fake"


# --- served end to end ----------------------------------------------------------------------------


async def test_a_registered_carrier_is_served_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registered(monkeypatch)
    call_id = new_call_id()
    with trio.fail_after(BUDGET):
        async with running(carrier_settings={"fake": {"token": TOKEN}}) as (server, agent):
            media = server.url.replace("http://", "ws://", 1) + spec.media_path
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
                form = {"call": call_id, "to": "+15559870000"}
                unsigned = await client.post("/fake/answer", data=form)
                signed = await client.post("/fake/answer", data=form, headers={TOKEN_HEADER: TOKEN})
                nameless = await client.post("/fake/answer", data={}, headers={TOKEN_HEADER: TOKEN})
                twilio = await client.post("/twilio/voice", data={"CallSid": new_call_id()})
            with pytest.raises(ConnectionRejected) as bare:
                async with raw_websocket(media):
                    pass
            answer = json.loads(signed.text)
            token = answer["parameters"]["voxbridge_token"]
            result = await simulate_call(
                media,
                wire=FakeWire(TOKEN),
                call_sid=call_id,
                custom_parameters={"voxbridge_token": token},
                seconds=0.5,
            )
            await server.app.registry.wait_empty()
            samples = await scrape(server)
            [record] = server.app.registry.recent

    assert unsigned.status_code == 403
    assert signed.status_code == 200
    assert signed.headers["content-type"] == "application/json"
    assert answer["stream"] == media  # the Host's URL: no --public-url on loopback
    assert set(answer["parameters"]) == {"voxbridge_token"}  # the agent is in the signed token
    CallTokens([TOKEN], ttl=60, carrier="fake").verify(token, call_id, now=time.time())
    assert nameless.status_code == 400 and nameless.text == "no call in the request\n"
    assert twilio.status_code == 200  # Twilio, unconfigured on loopback, is served too
    assert bare.value.status_code == 403
    assert result.rejected_status is None
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert result.frames_received > 0  # the echo came back through the fake's codec
    assert len(agent.sessions) == 1
    assert record.call_sid == call_id
    started = {
        dict(labels)["carrier"]: value
        for (name, labels), value in samples.items()
        if name == "voxbridge_calls_started_total" and dict(labels)["provider"] == "echo"
    }
    assert started == {**dict.fromkeys(REGISTERED, 0.0), "fake": 1.0}
    rejected = samples[("voxbridge_connections_rejected_total", (("reason", "bad_signature"),))]
    assert rejected == 2  # the unsigned webhook and the bare upgrade


# --- the security rule ----------------------------------------------------------------------------


async def asgi_http(app: VoxbridgeApp, path: str, body: bytes = b"") -> int:
    """A POST to ``app`` over ASGI directly: its status."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return int(sent[0]["status"])


async def asgi_upgrade(app: VoxbridgeApp, path: str) -> int:
    """A WebSocket upgrade to ``app`` over ASGI directly: the status of its refusal (0 if it
    was not refused before the call started, which these tests never do)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return int(sent[0].get("status", 0))


async def started(app: VoxbridgeApp, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.set_level(logging.INFO, logger="voxbridge.server")
    async with trio.open_nursery() as nursery:
        await app.start(nursery)
    return [r.getMessage() for r in caplog.records if r.name == "voxbridge.server"]


async def test_beyond_loopback_a_carrier_without_credentials_is_disabled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registered(monkeypatch)
    public = Settings(host="0.0.0.0", twilio_auth_token=TWILIO_TOKEN, public_url=PUBLIC, **ECHO)
    app = VoxbridgeApp(public, journal=MemoryJournal())
    lines = await started(app, caplog)

    assert not app.carriers["fake"].enabled and app.carriers["twilio"].enabled
    assert await asgi_http(app, "/fake/answer", b"call=CA1") == 404
    assert await asgi_upgrade(app, "/fake/media") == 404
    assert await asgi_http(app, "/twilio/voice", b"CallSid=CA1") == 403  # served, unsigned
    assert await asgi_upgrade(app, "/twilio/media") == 403
    [disabled] = [line for line in lines if "carrier fake is disabled" in line]
    assert "0.0.0.0" in disabled
    assert "/fake/answer and /fake/media answer 404" in disabled
    assert not any("twilio is disabled" in line for line in lines)


async def test_carriers_names_the_carriers_served_and_insecure_opens_only_those(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``--carriers twilio --insecure`` on a public bind (an existing Twilio deployment behind
    an authenticating proxy): Twilio is served unchecked, every other carrier answers 404 (with
    ``--insecure`` alone they were all opened unchecked); the start log says, per carrier,
    whether it is served and whether its checks are on."""
    registered(monkeypatch)
    settings = Settings(host="0.0.0.0", insecure=True, carriers="twilio", **ECHO)
    app = VoxbridgeApp(settings, journal=MemoryJournal())
    lines = await started(app, caplog)

    assert [name for name, route in app.carriers.items() if route.enabled] == ["twilio"]
    for name in (*REGISTERED, "fake"):
        spec = app.carriers[name].spec
        served = name == "twilio"
        status = await asgi_http(app, spec.webhook_path, b"")
        assert (status != 404) if served else (status == 404)
        if not served:
            assert await asgi_upgrade(app, spec.media_path) == 404
            [line] = [line for line in lines if f"carrier {name} is not served" in line]
            assert "--carriers twilio" in line
    assert any("Twilio signature validation is OFF" in line for line in lines)
    check_exposure(settings)  # --insecure: allowed, for the carriers named
    # a public bind whose only credentialed carrier is not among --carriers serves nothing
    only_plivo = Settings(
        host="0.0.0.0", carriers="plivo", twilio_auth_token=TWILIO_TOKEN, public_url=PUBLIC
    )
    check_exposure(attrs.evolve(only_plivo, carriers=None))  # Twilio's credentials: allowed
    with pytest.raises(SettingsError, match="refusing to bind"):
        check_exposure(only_plivo)


@pytest.mark.parametrize("value", ["", "twilio,", "twilio,nope", "TWILIO", 5])
def test_carriers_takes_only_registered_names(value: Any) -> None:
    with pytest.raises(SettingsError, match="--carriers"):
        Settings(carriers=value)


def test_carriers_defaults_to_every_registered_carrier() -> None:
    assert Settings().enabled_carriers == tuple(CARRIERS)
    assert Settings(carriers="vonage, twilio").enabled_carriers == ("vonage", "twilio")


@pytest.mark.parametrize(
    "changes",
    [
        {"host": "127.0.0.1"},  # loopback: checks off, served
        {"insecure": True},  # something in front authenticates
        {"carrier_settings": {"fake": {"token": TOKEN}}},  # its credentials: checked
    ],
)
async def test_a_carrier_is_served_on_loopback_insecure_or_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any]
) -> None:
    registered(monkeypatch)
    settings = attrs.evolve(
        Settings(host="0.0.0.0", twilio_auth_token=TWILIO_TOKEN, public_url=PUBLIC, **ECHO),
        **changes,
    )
    app = VoxbridgeApp(settings, journal=MemoryJournal())
    route = app.carriers["fake"]
    assert route.enabled
    expected = 403 if route.auth.checks else 200  # unsigned: refused only when checked
    assert await asgi_http(app, "/fake/answer", b"call=CA1") == expected


def test_a_public_bind_needs_one_carrier_with_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    registered(monkeypatch)
    with pytest.raises(SettingsError) as refused:
        check_exposure(Settings(host="0.0.0.0"))
    message = str(refused.value)
    assert "--twilio-auth-token" in message and "--insecure" in message
    assert "another carrier's credentials: " in message and "fake" in message
    # the fake's credentials alone: Twilio is then disabled, not served unauthenticated
    fake_only = Settings(host="0.0.0.0", carrier_settings={"fake": {"token": TOKEN}}, **ECHO)
    check_exposure(fake_only)
    app = VoxbridgeApp(fake_only, journal=MemoryJournal())
    assert app.carriers["fake"].enabled and not app.carriers["twilio"].enabled


# --- voxbridge call --carrier and voxbridge demo --carrier ----------------------------------------

TESTS = Path(__file__).resolve().parent
#: ``voxbridge call`` in a child process whose registry has the fake carrier's line too.
CALL_WITH_FAKE = (
    "import sys; sys.path.insert(0, sys.argv[1]); import carrierkit; "
    "from voxbridge.carriers.registry import CARRIERS; CARRIERS['fake'] = carrierkit.SPEC; "
    "from voxbridge.cli import main; sys.exit(main(sys.argv[2:]))"
)


async def test_voxbridge_call_speaks_the_chosen_carriers_wire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = registered(monkeypatch)

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", CALL_WITH_FAKE, str(TESTS), "call", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)

    with trio.fail_after(BUDGET):
        async with running() as (server, _agent):
            media = server.url.replace("http://", "ws://", 1) + spec.media_path
            done = await trio.to_thread.run_sync(
                lambda: call("--carrier", "fake", media, "--seconds", "0.3")
            )
            unknown = await trio.to_thread.run_sync(lambda: call("--carrier", "nope", media))
            await server.app.registry.wait_empty()
            samples = await scrape(server)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "caller_stop" in done.stdout
    assert (
        samples[("voxbridge_calls_started_total", (("carrier", "fake"), ("provider", "echo")))] == 1
    )
    assert unknown.returncode == 2
    assert "invalid choice: 'nope'" in unknown.stderr and "'fake'" in unknown.stderr


@pytest.mark.hang_limit(60)
async def test_the_demo_tours_a_registered_carriers_route(monkeypatch: pytest.MonkeyPatch) -> None:
    registered(monkeypatch)
    out = io.StringIO()
    with trio.fail_after(40):
        status = await run_demo(Console(file=out, width=200), 1.0, 0.5, carrier="fake")
    text = out.getvalue()
    assert status == 0, text  # every call was recorded: it reached /fake/media
    assert "fake calls to /fake/media" in text
    assert "idle_timeout" in text


# --- every carrier's answer builders, fuzzed (finding 3) -------------------------------------------

# what can reach an answer: header and form text (no control characters: h11 refuses them in
# headers, and names come from the agents file)
_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=700)


@pytest.mark.parametrize("name", REGISTERED)
@given(
    call_id=_TEXT,
    agent=_TEXT,
    host=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=300),
    token=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=600),
)
@hyp_settings(max_examples=150, deadline=None)
def test_answer_builders_raise_nothing_but_value_error(
    name: str, call_id: str, agent: str, host: str, token: str
) -> None:
    """Whatever the request put in the answer (the call id, an agent name, a ``Host`` header in
    the stream URL, a token), a carrier's ``connect`` and ``hangup`` give an answer or raise
    ``ValueError`` (the app answers that with a 400, counted ``bad_request``): nothing else; an
    answer given is a well-formed document (XML, or JSON)."""
    spec = CARRIERS[name]
    webhooks = spec.build_webhooks(Settings())
    parameters = {"voxbridge_token": token, "agent": agent}
    if spec.call_parameter:
        parameters[spec.call_parameter] = call_id
    for url in (
        f"ws://{host}{spec.media_path}",
        f"wss://h{spec.media_path}?voxbridge_token={token}",
    ):
        try:
            answer = webhooks.connect(url, parameters)
        except ValueError:
            continue
        well_formed(answer)
    well_formed(webhooks.hangup())


def well_formed(answer: HttpAnswer) -> None:
    if "json" in answer.content_type:
        json.loads(answer.body)
    else:
        assert "xml" in answer.content_type
        ElementTree.fromstring(answer.body)
