"""What the carrier tests share: a made-up carrier, the fuzzing strategies for JSON frames, and the
end-to-end rig.

**A made-up carrier** for the registry's tests: one module and one registry line, as
docs/carriers.md tells a carrier's author.

``fake`` streams Twilio's frames (its codec is :class:`~voxbridge.carriers.twilio.TwilioStream`),
but everything the registry derives is its own: the routes ``POST /fake/answer`` and
``WS /fake/media``, the settings ``--fake-region`` (a flag) and ``VOXBRIDGE_FAKE_TOKEN`` (a secret,
environment only), the ``carrier="fake"`` metric labels, ``--carrier fake``. Its checks: with a
token configured, every webhook and upgrade must carry it in ``X-Fake-Token``; the token is also
the per-call tokens' secret. Its webhook is a form naming the call (``call``) and the called number
(``to``); its answers are JSON.

Register it with :func:`registered` (``monkeypatch.setitem`` on the registry's dict: the settings,
the metrics, the app and the CLI all read that dict).

**Fuzzing** a codec's JSON frames: :func:`json_values` (any JSON, salted with strings the carrier's
frames hold) and :func:`fields_of` (objects of mostly plausible fields).

**End to end** (tests/test_e2e_<carrier>.py): :func:`serving` runs the real server (hypercorn on
port 0, loopback) in front of a provider's fake (tests/test_e2e_providers.py's rows say how to
make each fake echo, speak or interrupt) and the carrier's fake REST API, with short deadlines;
:class:`Rig` reads ``/metrics`` once every call is accounted for (:meth:`Rig.settled`,
:func:`metric`); :func:`cli_call` and :func:`demo_tour` run
``voxbridge call`` and ``voxbridge demo`` for a carrier.
"""

from __future__ import annotations

import hmac
import io
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qs

import attrs
import numpy as np
import pytest
import trio
from hypothesis import strategies as st
from rich.console import Console
from test_e2e_providers import PROVIDERS as ROWS
from test_e2e_providers import merged
from test_e2e_server import scrape

from voxbridge.audio import ulaw_to_pcm16
from voxbridge.carriers.base import CallRequest, HttpAnswer, HttpRequest
from voxbridge.carriers.registry import CARRIERS
from voxbridge.carriers.spec import CarrierSpec
from voxbridge.carriers.twilio import TwilioStream
from voxbridge.demo import run_demo
from voxbridge.errors import RemoteProtocolError
from voxbridge.options import option
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import CallResult, fake_for, simulate_call
from voxbridge.testing.carrier import TwilioWire
from voxbridge.testing.carrier_wire import SimulatedCall

TOKEN_HEADER = "x-fake-token"


@attrs.frozen
class FakeSettings:
    token: str | None = option(None, "the fake carrier's shared token", secret=True)
    region: str = option("here", "where the fake carrier is")


class FakeWebhooks:
    def __init__(self, token: str | None) -> None:
        self._token = token

    def __repr__(self) -> str:
        return f"FakeWebhooks(checks={self.checks})"

    @property
    def checks(self) -> bool:
        return self._token is not None

    @property
    def token_secrets(self) -> tuple[str, ...]:
        return () if self._token is None else (self._token,)

    def _carries_token(self, request: HttpRequest) -> bool:
        if self._token is None:
            return True
        given = request.headers.get(TOKEN_HEADER, "")
        return hmac.compare_digest(given.encode(), self._token.encode())

    def webhook_signed(self, request: HttpRequest, *, now: float) -> bool:
        return self._carries_token(request)

    def upgrade_signed(self, request: HttpRequest, *, now: float) -> bool:
        return self._carries_token(request)

    def call(self, request: HttpRequest) -> CallRequest:
        form = parse_qs(request.body.decode())
        if not form.get("call"):
            raise RemoteProtocolError("no call in the request")
        return CallRequest(form["call"][0], form.get("to", [""])[0])

    def connect(self, stream_url: str, parameters: Mapping[str, str]) -> HttpAnswer:
        document = {"stream": stream_url, "parameters": dict(parameters)}
        return HttpAnswer("application/json", json.dumps(document).encode())

    def hangup(self) -> HttpAnswer:
        return HttpAnswer("application/json", b'{"hangup": true}')


def _webhooks(settings: Settings, own: FakeSettings) -> FakeWebhooks:
    return FakeWebhooks(own.token)


SPEC = CarrierSpec(
    name="fake",
    codec=TwilioStream,
    webhook="answer",
    settings=FakeSettings,
    webhooks=_webhooks,
    simulator="carrierkit:FakeWire",
)


class FakeWire(TwilioWire):
    """Twilio's frames, with the fake carrier's token on the upgrade (when given)."""

    carrier = "fake"

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def upgrade_headers(self, call: SimulatedCall) -> list[tuple[str, str]]:
        return [] if self.token is None else [(TOKEN_HEADER, self.token)]


def registered(monkeypatch: pytest.MonkeyPatch) -> CarrierSpec[FakeSettings]:
    """Add the fake carrier to the registry for one test (the one line a carrier adds)."""
    monkeypatch.setitem(CARRIERS, SPEC.name, SPEC)
    return SPEC


# --- fuzzing a carrier codec's JSON frames ------------------------------------------------------


def json_values(*samples: str) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars (``null``, booleans, integers beyond 64 bits, finite floats, short
    text, and ``samples``: strings the carrier's frames hold, so that fields are sometimes right)
    and arrays and objects of them, a few levels deep."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.sampled_from(samples),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


def fields_of(junk: st.SearchStrategy[Any]) -> Callable[..., st.SearchStrategy[dict[str, Any]]]:
    """``fields(**strategies)``: objects whose fields are mostly plausible (drawn from their
    strategy), sometimes ``junk``, sometimes missing."""

    @st.composite
    def fields(draw: st.DrawFn, /, **strategies: st.SearchStrategy[Any]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, plausible in strategies.items():
            roll = draw(st.integers(0, 11))
            if roll < 10:
                obj[key] = draw(plausible)
            elif roll == 10:
                obj[key] = draw(junk)
        return obj

    return fields


# --- end to end -----------------------------------------------------------------------------------

BUDGET = 20.0  # real seconds per case, whatever happens
#: Short deadlines (as tests/test_e2e_endings.py's): a stalled caller ends within a second or two.
SHORT = {
    "idle_timeout": 1.0,
    "start_timeout": 1.0,
    "keepalive_interval": 0.5,
    "pong_timeout": 0.5,
    "close_timeout": 0.5,
    "connect_timeout": 2.0,
    "reconnect_budget": 2.0,
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@attrs.define
class Rig:
    """A running server (``server``) for one carrier, the provider's fake (``fake``) and the
    carrier's fake REST API (``api``: :class:`~voxbridge.testing.fake_telnyx.FakeTelnyx`, ...)."""

    carrier: str
    server: RunningServer
    fake: Any
    api: Any

    @property
    def media_url(self) -> str:
        """``ws://127.0.0.1:PORT/<carrier>/media``."""
        return self.server.url.replace("http://", "ws://", 1) + f"/{self.carrier}/media"

    async def settled(self) -> Samples:
        """``/metrics`` once every call has been accounted for."""
        with trio.fail_after(10):
            await self.server.app.registry.wait_empty()
        return await scrape(self.server)


R = TypeVar("R", bound=Rig)


@asynccontextmanager
async def serving(
    carrier: str,
    provider: str,
    *knobs: Mapping[str, Any],
    api: Any,
    own: Mapping[str, Any],
    kind: type[R] = Rig,  # type: ignore[assignment]  # the default R is Rig
    **settings: Any,
) -> AsyncIterator[R]:
    """voxbridge serving ``carrier`` in front of ``provider``'s fake (made with ``knobs``) and
    ``api``, the carrier's fake REST API (served here); ``own`` are the carrier's settings (its
    ``api_url`` is the fake's), ``settings`` any others; ``kind``: a carrier's own :class:`Rig`.
    Within :data:`BUDGET`."""
    fake = fake_for(provider)(**merged(*knobs))
    stop = trio.Event()
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            provider_url = await nursery.start(fake.serve)
            api_url = await nursery.start(api.serve)
            values = merged(
                SHORT,
                ROWS[provider].settings,
                {"carrier_settings": {carrier: {**own, "api_url": api_url}}},
                settings,
            )
            config = Settings(port=0, provider=provider, provider_url=provider_url, **values)
            server = await nursery.start(
                lambda task_status: serve(
                    config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            try:
                yield kind(carrier, server, fake, api)
            finally:
                stop.set()
            nursery.cancel_scope.cancel()


async def stalled_call(rig: Rig) -> tuple[CallResult, Samples]:
    """A caller that stops sending after 0.3 s but stays connected (the carrier's own wire):
    what it saw, and ``/metrics`` once the call is over and every provider session closed."""
    result = await simulate_call(rig.media_url, carrier=rig.carrier, seconds=30, stall_after=0.3)
    samples = await rig.settled()
    with trio.fail_after(5):
        while not all(session.is_closed for session in rig.fake.sessions):
            await trio.sleep(0.01)
    return result, samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rms(mulaw: bytes) -> float:
    """The RMS level of mu-law audio, in 16-bit sample units."""
    samples = np.frombuffer(ulaw_to_pcm16(mulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


def rms_db(mulaw: bytes) -> float:
    """:func:`rms` in dB (of one 16-bit sample unit)."""
    return 20 * math.log10(rms(mulaw))


async def cli_call(
    carrier: str, media_url: str, seconds: float = 0.3
) -> subprocess.CompletedProcess[str]:
    """``voxbridge call --carrier <carrier> <media_url> --seconds <seconds>`` in a child process."""
    command = [sys.executable, "-m", "voxbridge", "call", "--carrier", carrier, media_url]
    command += ["--seconds", str(seconds)]
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)
    )


async def demo_tour(carrier: str) -> tuple[int, str]:
    """``voxbridge demo --carrier <carrier>`` (1 s calls, 0.5 s stall), within 40 s: its exit
    status and what it printed."""
    out = io.StringIO()
    with trio.fail_after(40):
        status = await run_demo(Console(file=out, width=200), 1.0, 0.5, carrier=carrier)
    return status, out.getvalue()
