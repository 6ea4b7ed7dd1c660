"""What a provider declares about itself: one :class:`ProviderSpec` per provider module.

The registry (:mod:`voxbridge.providers.registry`) lists the specs, one line each, and everything
that names providers derives from that list:

* the ``--provider`` choices and each provider's own settings (``--<name>-<field>`` flags and
  ``VOXBRIDGE_<NAME>_<FIELD>`` variables, from the fields of its settings class);
* the environment variables its API key is read from (environment only, never a flag);
* the ``provider`` label values of the metrics, and the ``kind`` values of its usage;
* its close-code table (which closes end the call, which are resumed);
* its fake in :mod:`voxbridge.testing` (named, not imported: the product never imports the
  testing package).

A provider's settings class is an ``attrs`` frozen class whose fields have defaults and a
``help`` text in their metadata (``secret=True`` keeps a field out of flags and ``repr``); a field
named ``api_key`` is read from :attr:`ProviderSpec.key_variables`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ..errors import Reason

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import Provider

__all__ = ["NoSettings", "ProviderSpec", "option"]

S = TypeVar("S")

#: ``build(settings, own, echo_url)``: the provider for these settings, ``own`` being this
#: provider's settings (``settings.provider_settings[name]``), ``echo_url`` the running echo
#: agent's URL (the echo provider only). Raises :class:`~voxbridge.errors.SettingsError` for a
#: missing key or a malformed URL. No I/O.
Builder = Callable[["Settings", S, "str | None"], "Provider"]


def option(default: Any, help: str, *, secret: bool = False) -> Any:
    """A field of a provider's settings class: its default and ``--help`` text.

    A ``secret`` field (an API key) is environment only and never shown by ``repr``.
    """
    return attrs.field(
        default=default,
        repr=not secret,
        metadata={"help": help, "secret": secret, "cli": not secret},
    )


@attrs.frozen
class NoSettings:
    """The settings of a provider that has none of its own."""


@attrs.frozen
class ProviderSpec(Generic[S]):
    """One provider, as the rest of voxbridge sees it.

    Attributes:
        name: the ``--provider`` value and the ``provider`` metric label (lower case, ``-``).
        settings: its settings class (see the module docstring); its fields become flags.
        build: how to build the provider from settings (see ``Builder``).
        close_reasons: close code -> what it means (``UPSTREAM_CLOSED``: resumable;
            ``AGENT_HANGUP`` / ``UPSTREAM_REJECTED``: final); codes not listed are resumable.
        key_variables: environment variables of its API key, first set wins.
        usage_kinds: the ``kind`` label values of ``voxbridge_provider_usage_total``.
        endpoint: what ``--provider-url`` overrides (for ``--help`` and the docs).
        fake: ``module:Class`` of its fake server in :mod:`voxbridge.testing`.
    """

    name: str
    settings: type[S]
    build: Builder[S] = attrs.field(repr=False)
    close_reasons: Mapping[int, Reason]
    key_variables: tuple[str, ...] = ()
    usage_kinds: tuple[str, ...] = ()
    endpoint: str = ""
    fake: str = ""

    def own(self, settings: Settings) -> S:
        """This provider's settings out of ``settings``."""
        own: S = settings.provider_settings[self.name]
        return own

    def flag_prefix(self) -> str:
        """``openai`` -> ``openai_``; ``gpt-live`` -> ``gpt_live_``: the prefix of its fields'
        flat names (``--gpt-live-model``, ``VOXBRIDGE_GPT_LIVE_MODEL``)."""
        return self.name.replace("-", "_") + "_"
