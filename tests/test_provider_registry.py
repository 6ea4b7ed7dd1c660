"""The provider registry is what the rest of voxbridge reads, and it is checked against the code.

* Each spec's close-code table is the one its codec reads: a fresh codec's ``close_reason`` agrees
  with ``spec.close_reasons`` for every code a provider may use.
* ``voxbridge serve`` refuses at start, with status 2 and one line, a provider (or codec) that
  lacks a member of the ``Provider`` (``ProviderCodec``) protocol a call uses.
* Every bad provider setting is a ``SettingsError`` naming the flag and variables, never quoting a
  value that may be a key; ``--provider-url`` errors never quote the URL.
* ``serve --help`` lists the registry's providers with their key variables and default voices.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from voxbridge import cli
from voxbridge.errors import Reason, SettingsError
from voxbridge.providers import registry
from voxbridge.providers.base import Provider, ProviderCodec
from voxbridge.providers.openai_realtime import OpenAIRealtimeCodec
from voxbridge.providers.registry import PROVIDERS, missing_members, provider_for
from voxbridge.settings import Settings

#: The close codes checked: RFC 6455's (1000-1015), and the first of the library (3000-) and
#: application (4000-) ranges.
CODES = [*range(1000, 1016), *range(3000, 3010), *range(4000, 4010)]

SECRET = "sk-SECRET-in-the-url"


# --- close codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_fresh_codec_closes_as_its_spec_says(name: str) -> None:
    """Protocol-driven overrides come after a message a fresh codec has not seen: GPT-Live's
    ``session.closed`` reason, Gemini's refusal of a session that named a resumption handle."""
    spec = PROVIDERS[name]
    codec = spec.codec()
    for code in CODES:
        assert codec.close_reason(code) is spec.close_reasons.get(code, Reason.UPSTREAM_CLOSED), (
            name,
            code,
        )
    # the very table the codec module keeps, not a copy that could drift
    assert spec.close_reasons is vars(sys.modules[spec.codec.__module__])["CLOSE_REASONS"]


def test_the_tables_say_something() -> None:
    # the agreement above is not vacuous: the tables hold final codes, and not only one kind
    reasons = {reason for spec in PROVIDERS.values() for reason in spec.close_reasons.values()}
    assert reasons == {Reason.AGENT_HANGUP, Reason.UPSTREAM_REJECTED}


# --- the Provider protocol, checked at start -------------------------------------------------------


class StaleProvider:
    """A provider built from an old template: no ``for_agent``."""

    name = "openai"

    async def session(self, history: Sequence[Any], *, first: bool) -> Any:
        raise AssertionError("never called")


class StaleCodec(OpenAIRealtimeCodec):
    """A codec whose ``tool_result`` lacks the keyword the call passes."""

    def tool_result(self, exchange: Any) -> list[str]:  # type: ignore[override]
        return []


class SyncSessionProvider(StaleProvider):
    def for_agent(self, agent: Any, tools: Sequence[Any]) -> Provider:
        return self

    def session(self, history: Sequence[Any], *, first: bool) -> Any:  # type: ignore[override]
        raise AssertionError("never called")


def test_the_shipped_providers_and_codecs_implement_their_protocols() -> None:
    for name, spec in PROVIDERS.items():
        url = "http://127.0.0.1:9/api" if name == "ultravox" else "ws://127.0.0.1:9/x"
        provider = provider_for(Settings(provider=name, provider_url=url), echo_url=url)
        assert missing_members(provider, Provider) == [], name
        assert missing_members(spec.codec(), ProviderCodec) == [], name


def test_missing_members_names_what_is_missing() -> None:
    assert missing_members(StaleProvider(), Provider) == ["StaleProvider has no for_agent"]
    assert missing_members(SyncSessionProvider(), Provider) == [
        "SyncSessionProvider.session must be async"
    ]
    assert missing_members(StaleCodec(), ProviderCodec) == [
        "StaleCodec.tool_result does not take tool_result(exchange, *, known)"
    ]


def stale(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Replace the openai spec's build (or codec) for this test."""
    spec = attrs.evolve(PROVIDERS["openai"], **changes)
    monkeypatch.setitem(registry.PROVIDERS, "openai", spec)


def test_provider_for_refuses_a_provider_without_for_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    stale(monkeypatch, build=lambda settings, own, echo_url: StaleProvider())
    with pytest.raises(SettingsError, match="StaleProvider has no for_agent"):
        provider_for(Settings(provider="openai", provider_url="ws://127.0.0.1:9/v1/realtime"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"build": lambda settings, own, echo_url: StaleProvider()},
            "voxbridge: provider openai does not implement voxbridge/providers/base.py: "
            "StaleProvider has no for_agent",
        ),
        (
            {"codec": StaleCodec},
            "voxbridge: provider openai does not implement voxbridge/providers/base.py: "
            "StaleCodec.tool_result does not take tool_result(exchange, *, known)",
        ),
    ],
)
def test_serve_refuses_it_at_start_with_one_line(
    changes: dict[str, Any],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stale(monkeypatch, **changes)

    async def no_serving(settings: Settings) -> None:
        raise AssertionError("serve started")

    monkeypatch.setattr(cli, "_serve", no_serving)
    argv = ["serve", "--provider", "openai", "--provider-url", "ws://127.0.0.1:9/v1/realtime"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().out == message + "\n"


# --- settings errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"provider_settings": {"gemini": 3}},
            "provider_settings['gemini'] (its --gemini-* flags) must be a dict of its settings "
            "or its settings class, got int",
        ),
        (
            {"provider_settings": {"gemini": "x"}},
            "provider_settings['gemini'] (its --gemini-* flags) must be a dict of its settings "
            "or its settings class, got str",
        ),
        ({"provider_settings": 3}, "provider_settings must map names to settings, got int"),
        ({"provider_settings": {3: {}}}, "provider_settings: unknown 3 (known: echo, openai,"),
        (
            {"provider_settings": {"gemini": {"model": 3}}},
            "--gemini-model / VOXBRIDGE_GEMINI_MODEL must be text, got int",
        ),
        (
            {"provider_settings": {"gpt-live": {"tools_model": 1.5}}},
            "--gpt-live-tools-model / VOXBRIDGE_GPT_LIVE_TOOLS_MODEL must be text or unset "
            "(None), got float",
        ),
        (
            {"provider_settings": {"openai": {"api_key": 12345}}},
            "VOXBRIDGE_OPENAI_API_KEY / OPENAI_API_KEY must be text or unset (None), got int",
        ),
        (
            {"carrier_settings": {"telnyx": {"sample_rate": "8000"}}},
            "--telnyx-sample-rate / VOXBRIDGE_TELNYX_SAMPLE_RATE must be a whole number, got str",
        ),
        (
            {"carrier_settings": {"telnyx": {"sample_rate": True}}},
            "--telnyx-sample-rate / VOXBRIDGE_TELNYX_SAMPLE_RATE must be a whole number, got bool",
        ),
        ({"provider_url": 5}, "--provider-url / VOXBRIDGE_PROVIDER_URL must be text, got int"),
        ({"voice": 3}, "--voice / VOXBRIDGE_VOICE must be text, got int"),
    ],
)
def test_a_bad_provider_setting_is_a_settings_error(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings(**settings)
    assert str(raised.value).startswith(message)


def test_for_provider_checks_the_types() -> None:
    with pytest.raises(SettingsError, match=r"^--gemini-model / VOXBRIDGE_GEMINI_MODEL must be"):
        Settings().for_provider("gemini", model=3)
    assert Settings().for_provider("gemini", model="m").provider_settings["gemini"].model == "m"
    built = PROVIDERS["gemini"].settings(model=3)  # attrs does not check types: Settings does
    with pytest.raises(SettingsError, match=r"^--gemini-model / VOXBRIDGE_GEMINI_MODEL must be"):
        Settings(provider_settings={"gemini": built})


def test_a_key_of_the_wrong_type_is_not_quoted() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings().for_provider("openai", api_key=b"sk-bytes-key")
    assert "sk-bytes-key" not in str(raised.value)
    assert str(raised.value).endswith("got bytes")


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_bad_provider_url_names_the_flag_and_hides_the_url(name: str) -> None:
    wrong = f"ftp://private-host.example/path?key={SECRET}"
    with pytest.raises(SettingsError) as raised:
        provider_for(Settings(provider=name, provider_url=wrong), echo_url=wrong)
    text = str(raised.value)
    assert text.startswith("--provider-url / VOXBRIDGE_PROVIDER_URL ")
    assert "its scheme is ftp://" in text
    assert SECRET not in text and "private-host" not in text


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"ws://[::1/?key={SECRET}", "it does not parse"),
        (f"ws://h:99999/?key={SECRET}", "it does not parse"),
        (f"ws:///path?key={SECRET}", "it has no host"),
        (f"{SECRET}", "it has no scheme"),
    ],
)
def test_a_malformed_ws_url_is_refused_without_quoting_it(url: str, problem: str) -> None:
    with pytest.raises(SettingsError) as raised:
        provider_for(Settings(provider="gemini", provider_url=url))
    assert problem in str(raised.value) and SECRET not in str(raised.value)


# --- serve --help ----------------------------------------------------------------------------------


def serve_help(flag: str) -> str:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    [action] = [a for a in commands.choices["serve"]._actions if flag in a.option_strings]
    assert action.help is not None
    return action.help


def test_serve_help_lists_the_providers_their_keys_and_voices() -> None:
    provider, voice = serve_help("--provider"), serve_help("--voice")
    for name, spec in PROVIDERS.items():
        keys = " or ".join(spec.key_variables) or "no key"
        assert f"{name} ({keys})" in provider
        assert f"{name} {spec.voice or 'its own default'}" in voice
    assert "gemini (GEMINI_API_KEY or GOOGLE_API_KEY)" in provider
    assert "gpt-live marin" in voice and "deepgram aura-2-thalia-en (the speak model)" in voice
