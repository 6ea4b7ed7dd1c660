"""What a carrier declares about itself: one :class:`CarrierSpec` per carrier module.

The registry (:mod:`voxbridge.carriers.registry`) lists the specs, one line each, and everything
that names carriers derives from it: the routes (``WS /<name>/media`` and
``POST /<name>/<webhook>``), each carrier's own settings (``--<name>-<field>`` flags and
``VOXBRIDGE_<NAME>_<FIELD>`` variables, from its settings class, as for providers), the
``carrier`` metric label values, ``voxbridge call --carrier`` and the simulators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import CarrierCodec, CarrierRest, CarrierWebhooks

__all__ = ["CarrierSpec", "no_rest"]

S = TypeVar("S")


def no_rest(settings: Settings, own: object) -> CarrierRest | None:
    """The REST builder of a carrier without one: no ``end_call``, no ``transfer_call``."""
    return None


@attrs.frozen
class CarrierSpec(Generic[S]):
    """One carrier, as the rest of voxbridge sees it.

    Attributes:
        name: the route prefix and the ``carrier`` metric label (lower case).
        codec: makes a fresh :class:`~voxbridge.carriers.base.CarrierCodec` for one stream.
        webhook: the last segment of its webhook route (``voice``: ``POST /twilio/voice``).
        settings: its settings class (an ``attrs`` frozen class, fields made with
            :func:`voxbridge.options.option`); :class:`~voxbridge.options.NoSettings` when it has
            none of its own.
        webhooks: builds its :class:`~voxbridge.carriers.base.CarrierWebhooks` from the settings
            (``settings``, and its own); no I/O.
        simulator: ``module:Class`` of its caller simulator's wire
            (:class:`~voxbridge.testing.carrier_wire.CallerWire`) in :mod:`voxbridge.testing`;
            named, not imported (the product never imports the testing package).
        key_variables: environment variables of a field named ``api_key`` in its settings,
            first set wins (as for providers).
        rest: builds its :class:`~voxbridge.carriers.base.CarrierRest` from the settings (and
            its own), or ``None`` when its REST credentials are not configured (then the
            built-in ``end_call`` and ``transfer_call`` are not offered); no I/O.
        call_parameter: for a carrier whose stream does not name its call (Vonage), the
            parameter of the webhook's answer that carries the call id to the stream's start
            (``uuid``); ``""``: the stream names its call itself.
    """

    name: str
    codec: Callable[[], CarrierCodec] = attrs.field(repr=False)
    webhook: str
    settings: type[S]
    webhooks: Callable[[Settings, S], CarrierWebhooks] = attrs.field(repr=False)
    simulator: str = ""
    key_variables: tuple[str, ...] = ()
    rest: Callable[[Settings, S], CarrierRest | None] = attrs.field(default=no_rest, repr=False)
    call_parameter: str = ""

    @property
    def media_path(self) -> str:
        """``/<name>/media``: the WebSocket route of its media streams."""
        return f"/{self.name}/media"

    @property
    def webhook_path(self) -> str:
        """``/<name>/<webhook>``: the route of its call webhook."""
        return f"/{self.name}/{self.webhook}"

    def own(self, settings: Settings) -> S:
        """This carrier's settings out of ``settings``."""
        own: S = settings.carrier_settings[self.name]
        return own

    def flag_prefix(self) -> str:
        """``telnyx`` -> ``telnyx_``: the prefix of its fields' flat names."""
        return self.name.replace("-", "_") + "_"

    def build_webhooks(self, settings: Settings) -> CarrierWebhooks:
        """Its webhooks for ``settings``.

        Raises:
            SettingsError: its credentials are inconsistent (e.g. a check needs ``--public-url``).
        """
        return self.webhooks(settings, self.own(settings))

    def build_rest(self, settings: Settings) -> CarrierRest | None:
        """Its REST API for ``settings``; ``None`` without REST credentials."""
        return self.rest(settings, self.own(settings))
