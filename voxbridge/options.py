"""The fields of a provider's or a carrier's own settings class: :func:`option` and :class:`NoSettings`.

A provider (:mod:`voxbridge.providers.spec`) or a carrier (:mod:`voxbridge.carriers.spec`) declares
its own settings as an ``attrs`` frozen class whose fields are made with :func:`option`. From each
field :mod:`voxbridge.settings` derives a ``--<name>-<field>`` flag and the environment variables
``VOXBRIDGE_<NAME>_<FIELD>`` and, after it, the vendor's own (``env``: ``PLIVO_AUTH_TOKEN``).

This module imports nothing of voxbridge, so both packages (and the settings) share it without a
cross-layer import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["NoSettings", "option"]


def option(
    default: Any,
    help: str,
    *,
    secret: bool = False,
    env: tuple[str, ...] = (),
    validator: Callable[[Any, attrs.Attribute[Any], Any], None] | None = None,
) -> Any:
    """A field of a provider's or a carrier's settings class.

    Args:
        default: its value when neither a flag nor a variable sets it.
        help: its ``--help`` text.
        secret: an API key, token or private key: environment only (no flag), never shown by
            ``repr``.
        env: the vendor's own environment variables for it (``("PLIVO_AUTH_TOKEN",)``), read
            after ``VOXBRIDGE_<NAME>_<FIELD>``, first set wins.
        validator: an ``attrs`` validator, called with ``(instance, attribute, value)``; it
            raises :class:`~voxbridge.errors.SettingsError` for a value the field refuses.

    Returns:
        An ``attrs`` field (metadata ``help``, ``secret``, ``cli`` and ``env``).
    """
    return attrs.field(
        default=default,
        repr=not secret,
        validator=validator,
        metadata={"help": help, "secret": secret, "cli": not secret, "env": env},
    )


@attrs.frozen
class NoSettings:
    """The settings of a provider or carrier that has none of its own."""
