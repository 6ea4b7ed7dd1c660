"""Every provider voxbridge knows, one line each: adding a provider adds one line to ``SPECS``.

Each line is the :class:`~voxbridge.providers.spec.ProviderSpec` its module declares. The
``--provider`` choices, each provider's settings, the environment variables of its key, the metric
label values and the fakes are all derived from this tuple.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ..errors import SettingsError
from . import deepgram, gemini, gpt_live, openai_realtime, ultravox_rest
from .base import Provider, ProviderCodec
from .spec import ProviderSpec

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["PROVIDERS", "SPECS", "missing_members", "provider_for"]

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
    """The provider the settings select (``settings.provider``), built from its own settings,
    and checked against the :class:`~voxbridge.providers.base.Provider` protocol (and a fresh
    codec of its spec against :class:`~voxbridge.providers.base.ProviderCodec`), so that
    ``voxbridge serve`` refuses at start what a call would fail on later. No I/O.

    Raises:
        SettingsError: a key or URL is missing or malformed, or the provider or its codec lacks
            a member of its protocol (one line naming the members).
    """
    spec = PROVIDERS[settings.provider]
    provider = spec.build(settings, spec.own(settings), echo_url)
    problems = missing_members(provider, Provider)
    try:
        codec = spec.codec()
    except TypeError as exc:  # a codec class that needs arguments, without a factory
        raise SettingsError(f"provider {spec.name}: its spec's codec() fails: {exc}") from None
    problems += missing_members(codec, ProviderCodec)
    if problems:
        raise SettingsError(
            f"provider {spec.name} does not implement voxbridge/providers/base.py: "
            + "; ".join(problems)
        )
    return provider


def missing_members(obj: object, protocol: type) -> list[str]:
    """What ``obj`` lacks of ``protocol``'s public members (its annotated attributes, properties
    and methods), as ``"<Class> has no <name>"`` or ``"<Class>.<name> takes (<parameters>)"``
    lines; ``[]`` when it has them all.

    A method must accept the protocol method's arguments (positional and keyword-only, by name)
    and be ``async`` where the protocol's is. Nothing is called.
    """
    kind = type(obj).__name__
    problems: list[str] = []
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name in vars(protocol) if not name.startswith("_")}
    for name in sorted(names):
        declared = inspect.getattr_static(protocol, name, None)
        try:
            value = getattr(obj, name)
        except AttributeError:
            problems.append(f"{kind} has no {name}")
            continue
        if not inspect.isfunction(declared):
            continue  # an attribute or a property: having it is enough
        wanted = inspect.signature(declared)
        params = list(wanted.parameters.values())[1:]  # without self
        if not callable(value):
            problems.append(f"{kind}.{name} is not a method")
            continue
        try:
            inspect.signature(value).bind(
                *(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD),
                **{p.name: p.name for p in params if p.kind is p.KEYWORD_ONLY},
            )
        except TypeError:
            problems.append(f"{kind}.{name} does not take {name}{_shown(wanted)}")
            continue
        except ValueError:  # no signature to read (a builtin): give it the benefit of the doubt
            continue
        if inspect.iscoroutinefunction(declared) and not inspect.iscoroutinefunction(value):
            problems.append(f"{kind}.{name} must be async")
    return problems


def _shown(signature: inspect.Signature) -> str:
    """``(agent, tools)``: a protocol method's parameters without ``self`` and annotations."""
    params = list(signature.parameters.values())[1:]
    bare = [p.replace(annotation=p.empty) for p in params]
    return str(signature.replace(parameters=bare, return_annotation=signature.empty))
