"""Every provider voxbridge knows, one line each: adding a provider adds one line to ``SPECS``.

Each line is the :class:`~voxbridge.providers.spec.ProviderSpec` its module declares. The
``--provider`` choices, each provider's settings, the environment variables of its key, the metric
label values and the fakes are all derived from this tuple.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import deepgram, gemini, gpt_live, openai_realtime, ultravox_rest
from .spec import ProviderSpec

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import Provider

__all__ = ["PROVIDERS", "SPECS", "provider_for"]

SPECS: tuple[ProviderSpec[Any], ...] = (
    openai_realtime.ECHO_SPEC,
    openai_realtime.SPEC,
    ultravox_rest.SPEC,
    gpt_live.SPEC,
    deepgram.SPEC,
    gemini.SPEC,
)

#: Provider name -> its spec, in ``SPECS`` order.
PROVIDERS: dict[str, ProviderSpec[Any]] = {spec.name: spec for spec in SPECS}


def provider_for(settings: Settings, *, echo_url: str | None = None) -> Provider:
    """The provider the settings select (``settings.provider``), built from its own settings.

    Raises:
        SettingsError: a key or URL is missing or malformed.
    """
    spec = PROVIDERS[settings.provider]
    return spec.build(settings, spec.own(settings), echo_url)
