"""Where a provider lives and how to open a session with it (URL and headers)."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from ..settings import Settings, SettingsError

__all__ = ["ProviderEndpoint", "endpoint_for"]

OPENAI_URL = "wss://api.openai.com/v1/realtime"


@attrs.frozen
class ProviderEndpoint:
    """A provider's WebSocket endpoint.

    ``headers`` may hold credentials: the class keeps them out of its ``repr`` so they never reach a
    log line by accident.
    """

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    flavour: str = "ga"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "wss" else 80)

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme == "wss"

    @property
    def resource(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def endpoint_for(settings: Settings, *, echo_url: str | None = None) -> ProviderEndpoint:
    """The endpoint the settings select.

    Args:
        settings: the process settings.
        echo_url: where the in-process echo agent listens (``provider == "echo"``).

    Raises:
        SettingsError: the provider needs a key or URL that is missing, or the URL is not ws(s)://.
    """
    if settings.provider == "echo":
        url = settings.provider_url or echo_url
        if url is None:
            raise SettingsError("the echo provider needs a running echo agent (echo_url)")
        return ProviderEndpoint("echo", _checked(url))
    if settings.provider == "openai":
        base = settings.provider_url or OPENAI_URL
        url = (
            base
            if "model=" in base
            else f"{base}{'&' if '?' in base else '?'}model={settings.openai_model}"
        )
        headers: list[tuple[str, str]] = []
        if settings.openai_api_key:
            headers.append(("Authorization", f"Bearer {settings.openai_api_key}"))
        elif settings.provider_url is None:
            raise SettingsError("provider openai needs OPENAI_API_KEY")
        return ProviderEndpoint("openai", _checked(url), tuple(headers))
    raise SettingsError(f"provider {settings.provider!r} is not available in this version")


def _checked(url: str) -> str:
    if urlsplit(url).scheme not in ("ws", "wss"):
        raise SettingsError(f"provider URL must be ws:// or wss://, got {url!r}")
    return url
