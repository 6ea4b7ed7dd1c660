"""What a provider declares about itself: one :class:`ProviderSpec` per provider module.

The registry (:mod:`voxbridge.providers.registry`) lists the specs, one line each, and everything
that names providers derives from that list:

* the ``--provider`` choices and each provider's own settings (``--<name>-<field>`` flags and
  ``VOXBRIDGE_<NAME>_<FIELD>`` variables, from the fields of its settings class);
* the environment variables its API key is read from (environment only, never a flag);
* the ``provider`` label values of the metrics, and the ``kind`` values of its usage;
* its close-code table (which closes end the call, which are resumed): the very table its codec's
  ``close_reason`` reads;
* its codec class, which names the sans-IO module the tests check (no I/O, clock or logging), and
  makes the fresh codec ``voxbridge serve`` checks the provider against at start;
* its fake in :mod:`voxbridge.testing` (named, not imported: the product never imports the
  testing package).

A provider's settings class is an ``attrs`` frozen class whose fields are made with
:func:`~voxbridge.options.option` (a default and a ``help`` text; ``secret=True`` keeps a field out
of flags and ``repr``); a field named ``api_key`` is read from :attr:`ProviderSpec.key_variables`.
:func:`~voxbridge.options.option` and :class:`~voxbridge.options.NoSettings` live in
:mod:`voxbridge.options`, shared with the carriers, and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from ..errors import Reason
from ..options import NoSettings, option

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import Provider, ProviderCodec

__all__ = ["NoSettings", "ProviderSpec", "option"]

S = TypeVar("S")

#: ``build(settings, own, echo_url)``: the provider for these settings, ``own`` being this
#: provider's settings (``settings.provider_settings[name]``), ``echo_url`` the running echo
#: agent's URL (the echo provider only). Raises :class:`~voxbridge.errors.SettingsError` for a
#: missing key or a malformed URL. No I/O.
Builder = Callable[["Settings", S, "str | None"], "Provider"]


@attrs.frozen
class ProviderSpec(Generic[S]):
    """One provider, as the rest of voxbridge sees it.

    Attributes:
        name: the ``--provider`` value and the ``provider`` metric label (lower case, ``-``).
        settings: its settings class (see the module docstring); its fields become flags.
        build: how to build the provider from settings (see ``Builder``).
        close_reasons: close code -> what it means (``UPSTREAM_CLOSED``: resumable;
            ``AGENT_HANGUP`` / ``UPSTREAM_REJECTED``: final); codes not listed are resumable.
            The same object its codec's ``close_reason`` reads (``CLOSE_REASONS`` in the codec
            module); a test checks a fresh codec against it for every registered provider.
        codec: makes a fresh :class:`~voxbridge.providers.base.ProviderCodec` with its default
            configuration (the codec class itself, called without arguments). Its module is
            the provider's sans-IO codec module (``tests/test_sans_io.py`` checks it), and
            ``voxbridge serve`` checks the provider it builds, and this codec, against the
            ``Provider`` and ``ProviderCodec`` protocols before it binds.
        key_variables: environment variables of its API key, first set wins.
        usage_kinds: the ``kind`` label values of ``voxbridge_provider_usage_total``.
        endpoint: what ``--provider-url`` overrides (for ``--help`` and the docs).
        fake: ``module:Class`` of its fake server in :mod:`voxbridge.testing`.
        voice: its voice when ``--voice`` is unset, for ``--help`` (``"alloy"``; Deepgram's
            ``"aura-2-thalia-en (the speak model)"``); ``""``: the provider's own default (no
            voice is sent).
    """

    name: str
    settings: type[S]
    build: Builder[S] = attrs.field(repr=False)
    close_reasons: Mapping[int, Reason]
    codec: Callable[[], ProviderCodec] = attrs.field(repr=False)
    key_variables: tuple[str, ...] = ()
    usage_kinds: tuple[str, ...] = ()
    endpoint: str = ""
    fake: str = ""
    voice: str = ""

    def own(self, settings: Settings) -> S:
        """This provider's settings out of ``settings``."""
        own: S = settings.provider_settings[self.name]
        return own

    def flag_prefix(self) -> str:
        """``openai`` -> ``openai_``; ``gpt-live`` -> ``gpt_live_``: the prefix of its fields'
        flat names (``--gpt-live-model``, ``VOXBRIDGE_GPT_LIVE_MODEL``)."""
        return self.name.replace("-", "_") + "_"
