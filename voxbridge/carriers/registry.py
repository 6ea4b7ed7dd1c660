"""Every carrier voxbridge knows, one line each: adding a carrier adds one line to ``SPECS``.

Each line is the :class:`~voxbridge.carriers.spec.CarrierSpec` its module declares. Everything
that names carriers derives from :data:`CARRIERS`: the routes (``WS /<name>/media``,
``POST /<name>/<webhook>``), each carrier's own settings (``--<name>-<field>`` flags and
``VOXBRIDGE_<NAME>_<FIELD>`` variables), the ``carrier`` metric label values,
``voxbridge call --carrier`` and ``voxbridge demo --carrier``.

:mod:`voxbridge.settings` imports this module, so the modules listed here import
``voxbridge.settings`` only under ``TYPE_CHECKING`` (and never :mod:`voxbridge.server`).
"""

from __future__ import annotations

from typing import Any

from . import plivo, telnyx, twilio_webhooks, vonage
from .spec import CarrierSpec

__all__ = ["CARRIERS", "SPECS"]

SPECS: tuple[CarrierSpec[Any], ...] = (
    twilio_webhooks.SPEC,  # Twilio's spec lives with its webhooks (twilio.py is the codec)
    plivo.SPEC,
    telnyx.SPEC,
    vonage.SPEC,
)

#: Carrier name -> its spec, in ``SPECS`` order.
CARRIERS: dict[str, CarrierSpec[Any]] = {spec.name: spec for spec in SPECS}
