"""Every carrier voxbridge knows, one line each: adding a carrier adds one line to ``SPECS``.

Each line is the :class:`~voxbridge.carriers.spec.CarrierSpec` a carrier declares in its HTTP-side
module, ``<name>_webhooks.py``, next to its settings class (the codec module, ``<name>.py``, is
sans-IO and imports nothing of the HTTP side). Everything that names carriers derives from
:data:`CARRIERS`: the routes (``WS /<name>/media``, ``POST /<name>/<webhook>``), each carrier's own
settings (``--<name>-<field>`` flags and ``VOXBRIDGE_<NAME>_<FIELD>`` variables), the ``carrier``
metric label values, ``voxbridge call --carrier`` and ``voxbridge demo --carrier``.

:mod:`voxbridge.settings` imports this module, so the modules listed here import
``voxbridge.settings`` only under ``TYPE_CHECKING`` (and never :mod:`voxbridge.server`).
"""

from __future__ import annotations

from typing import Any

from . import plivo_webhooks, telnyx_webhooks, twilio_webhooks, vonage_webhooks
from .spec import CarrierSpec

__all__ = ["CARRIERS", "SPECS"]

SPECS: tuple[CarrierSpec[Any], ...] = (
    twilio_webhooks.SPEC,
    plivo_webhooks.SPEC,
    telnyx_webhooks.SPEC,
    vonage_webhooks.SPEC,
)

#: Carrier name -> its spec, in ``SPECS`` order.
CARRIERS: dict[str, CarrierSpec[Any]] = {spec.name: spec for spec in SPECS}
