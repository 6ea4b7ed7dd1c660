"""Provider name -> how to build it from settings. Adding a provider adds one line to ``PROVIDERS``."""

from __future__ import annotations

from collections.abc import Callable

from ..settings import Settings, SettingsError
from .base import Provider
from .deepgram import DEEPGRAM_URL, SPEAK_MODEL, THINK_MODEL, DeepgramProvider, deepgram_endpoint
from .endpoint import ProviderEndpoint, checked_ws_url
from .gemini import GEMINI_MODEL, GEMINI_URL, GEMINI_VOICE, GeminiProvider, gemini_endpoint
from .gpt_live import GPT_LIVE_URL, GptLiveProvider, gpt_live_endpoint
from .openai_realtime import OpenAIProvider, openai_endpoint
from .ultravox import UltravoxProvider

__all__ = ["PROVIDERS", "provider_for"]

OPENAI_URL = "wss://api.openai.com/v1/realtime"
ULTRAVOX_URL = "https://api.ultravox.ai/api"


def _echo(settings: Settings, echo_url: str | None) -> Provider:
    url = settings.provider_url or echo_url
    if url is None:
        raise SettingsError("the echo provider needs a running echo agent (echo_url)")
    return OpenAIProvider.from_settings(ProviderEndpoint("echo", checked_ws_url(url)), settings)


def _openai(settings: Settings, echo_url: str | None) -> Provider:
    if not settings.openai_api_key and settings.provider_url is None:
        raise SettingsError("provider openai needs OPENAI_API_KEY")
    endpoint = openai_endpoint(
        checked_ws_url(settings.provider_url or OPENAI_URL),
        settings.openai_api_key,
        model=settings.openai_model,
    )
    return OpenAIProvider.from_settings(endpoint, settings)


def _ultravox(settings: Settings, echo_url: str | None) -> Provider:
    if not settings.ultravox_api_key and settings.provider_url is None:
        raise SettingsError("provider ultravox needs ULTRAVOX_API_KEY")
    base = settings.provider_url or ULTRAVOX_URL
    if not base.startswith(("http://", "https://")):
        raise SettingsError(f"the Ultravox URL is its REST base, http(s)://.../api; got {base!r}")
    return UltravoxProvider(
        settings.ultravox_api_key,
        base_url=base,
        voice=settings.voice,
        system_prompt=settings.agent_instructions(),
        model=settings.ultravox_model,
        connect_timeout=settings.connect_timeout,
        tool_timeout=settings.tool_timeout,
    )


def _gpt_live(settings: Settings, echo_url: str | None) -> Provider:
    if not settings.openai_api_key and settings.provider_url is None:
        raise SettingsError("provider gpt-live needs OPENAI_API_KEY")
    endpoint = gpt_live_endpoint(
        checked_ws_url(settings.provider_url or GPT_LIVE_URL), settings.openai_api_key
    )
    return GptLiveProvider.from_settings(
        endpoint,
        settings,
        model=settings.gpt_live_model,
        tools_model=settings.gpt_live_tools_model,
    )


def _deepgram(settings: Settings, echo_url: str | None) -> Provider:
    if not settings.deepgram_api_key and settings.provider_url is None:
        raise SettingsError("provider deepgram needs DEEPGRAM_API_KEY")
    endpoint = deepgram_endpoint(
        settings.deepgram_api_key, checked_ws_url(settings.provider_url or DEEPGRAM_URL)
    )
    return DeepgramProvider(
        endpoint,
        think_model=settings.deepgram_think_model or THINK_MODEL,
        speak_model=settings.voice or SPEAK_MODEL,
        prompt=settings.agent_instructions(),
    )


def _gemini(settings: Settings, echo_url: str | None) -> Provider:
    if not settings.gemini_api_key and settings.provider_url is None:
        raise SettingsError("provider gemini needs GEMINI_API_KEY (or GOOGLE_API_KEY)")
    endpoint = gemini_endpoint(
        checked_ws_url(settings.provider_url or GEMINI_URL), settings.gemini_api_key
    )
    return GeminiProvider(
        endpoint,
        model=settings.gemini_model or GEMINI_MODEL,
        voice=settings.voice or GEMINI_VOICE,
        instructions=settings.agent_instructions(),
    )


PROVIDERS: dict[str, Callable[[Settings, str | None], Provider]] = {
    "echo": _echo,
    "openai": _openai,
    "ultravox": _ultravox,
    "gpt-live": _gpt_live,
    "deepgram": _deepgram,
    "gemini": _gemini,
}


def provider_for(settings: Settings, *, echo_url: str | None = None) -> Provider:
    """The provider the settings select.

    Raises:
        SettingsError: a key or URL is missing or malformed.
    """
    return PROVIDERS[settings.provider](settings, echo_url)
