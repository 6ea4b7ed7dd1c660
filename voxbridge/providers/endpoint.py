"""Where a provider lives and how to open a session with it (URL and headers)."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from ..errors import SettingsError

__all__ = ["ProviderEndpoint", "checked_ws_url"]


@attrs.frozen
class ProviderEndpoint:
    """A provider's WebSocket endpoint.

    ``headers`` may hold credentials, and a join URL (Ultravox) is itself one: the ``repr`` shows
    neither, so they never reach a log line by accident.
    """

    name: str
    url: str = attrs.field(repr=lambda url: _without_query(url))
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)

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


def _without_query(url: str) -> str:
    """The URL for display: a join URL's path and query can act as a credential (Ultravox)."""
    parts = urlsplit(url)
    return repr(f"{parts.scheme}://{parts.netloc}/...") if parts.path.strip("/") else repr(url)


def checked_ws_url(url: str) -> str:
    """``url`` if it is a ws:// or wss:// URL.

    Raises:
        SettingsError: it is not.
    """
    if urlsplit(url).scheme not in ("ws", "wss"):
        raise SettingsError(f"provider URL must be ws:// or wss://, got {url!r}")
    return url
