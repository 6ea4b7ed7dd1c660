"""A made-up carrier for the registry's tests: one module and one registry line, as docs/carriers.md
tells a carrier's author.

``fake`` streams Twilio's frames (its codec is :class:`~voxbridge.carriers.twilio.TwilioStream`),
but everything the registry derives is its own: the routes ``POST /fake/answer`` and
``WS /fake/media``, the settings ``--fake-region`` (a flag) and ``VOXBRIDGE_FAKE_TOKEN`` (a secret,
environment only), the ``carrier="fake"`` metric labels, ``--carrier fake``. Its checks: with a
token configured, every webhook and upgrade must carry it in ``X-Fake-Token``; the token is also
the per-call tokens' secret. Its webhook is a form naming the call (``call``) and the called number
(``to``); its answers are JSON.

Register it with :func:`registered` (``monkeypatch.setitem`` on the registry's dict: the settings,
the metrics, the app and the CLI all read that dict).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from urllib.parse import parse_qs

import attrs
import pytest

from voxbridge.carriers.base import CallRequest, HttpAnswer, HttpRequest
from voxbridge.carriers.registry import CARRIERS
from voxbridge.carriers.spec import CarrierSpec
from voxbridge.carriers.twilio import TwilioStream
from voxbridge.errors import RemoteProtocolError
from voxbridge.providers.spec import option
from voxbridge.settings import Settings
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
