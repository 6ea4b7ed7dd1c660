"""Where a provider lives and how to open a session with it (URL and headers)."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from ..errors import SettingsError

__all__ = ["URL_SETTING", "ProviderEndpoint", "checked_ws_url", "url_problem"]


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


#: How an error names the setting a provider URL comes from.
URL_SETTING = "--provider-url / VOXBRIDGE_PROVIDER_URL"


def checked_ws_url(url: str) -> str:
    """``url`` if it is a ws:// or wss:// URL with a host (and, if any, a valid port).

    Raises:
        SettingsError: it is not. The message names the setting (:data:`URL_SETTING`) and never
            quotes the URL, which may carry a key (Gemini's ``?key=``).
    """
    problem = url_problem(url, ("ws", "wss"))
    if problem:
        raise SettingsError(f"{URL_SETTING} must be ws:// or wss://, with a host: {problem}")
    return url


def url_problem(url: str, schemes: tuple[str, ...]) -> str:
    """What is wrong with ``url`` for ``schemes`` (``""``: nothing), without quoting it: only its
    scheme is named, when it is a plain word."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number, or out of range
    except ValueError:
        return "it does not parse (a bad port or IPv6 address)"
    if parts.scheme not in schemes:
        shown = f"{parts.scheme}://" if parts.scheme.isalnum() and len(parts.scheme) < 16 else ""
        return f"its scheme is {shown}" if shown else "it has no scheme"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0"
    return ""
