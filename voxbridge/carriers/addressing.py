"""Telephony addresses: what a call may be transferred to.

Pure functions, no imports from the rest of voxbridge, so settings, agents and every carrier's REST
module can share them without an import cycle.
"""

from __future__ import annotations

__all__ = ["is_transfer_target"]


def is_transfer_target(value: str) -> bool:
    """Whether ``value`` is an E.164 number (``+`` and 8-15 digits) or a ``sip:``/``sips:`` URI
    with a host (``sip:alice@example.com``)."""
    if value.startswith("+"):
        return value[1:].isdigit() and value[1:].isascii() and 8 <= len(value) - 1 <= 15
    scheme, _, rest = value.partition(":")
    return (
        scheme.lower() in ("sip", "sips") and "@" in rest and not any(c in rest for c in ' <>"\n\r')
    )
