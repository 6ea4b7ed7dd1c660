"""Settings: one frozen value, built from defaults < environment < command-line flags.

Every field that an operator may set has a CLI flag (``--idle-timeout``) and an environment variable
(``VOXBRIDGE_IDLE_TIMEOUT``); both are derived from the field name, so the tables in docs/timeouts.md
and docs/operations.md and ``voxbridge serve --help`` cannot drift apart (tests/test_docs_examples.py
checks the docs against the fields). Durations are seconds (floats), sizes are bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import attrs

from .carriers.addressing import is_transfer_target
from .carriers.registry import CARRIERS as CARRIER_SPECS
from .errors import SettingsError
from .providers.registry import PROVIDERS as PROVIDER_SPECS

__all__ = ["PROVIDERS", "Option", "Settings", "SettingsError", "is_transfer_target"]

SECONDS = 1.0
#: The ``--provider`` choices, in the registry's order (voxbridge/providers/registry.py).
PROVIDERS = tuple(PROVIDER_SPECS)
LOG_FORMATS = ("console", "json")
MAX_UPSTREAM_BATCH_MS = 500  # beyond half a second, batching would wreck turn-taking
#: The ``--marks`` choices: a mark after every media message, or only at the end of a burst and
#: every half second of audio (voxbridge/session/playback.py).
MARK_MODES = ("exact", "sparse")
MIN_SESSION_AGE = 1 * SECONDS  # below that, recycling would open sessions in a tight loop

# Environment variables that are aliases of a setting, for operators coming from other bridges.
ENV_ALIASES: dict[str, tuple[str, ...]] = {"idle_timeout": ("WS_IDLE_TIMEOUT_SECONDS",)}


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise SettingsError(f"{_names(attribute.name)} must be a positive number, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise SettingsError(f"{_names(attribute.name)} must be >= 0, got {value!r}")


def _count(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (type(value) is int and value >= 0):
        raise SettingsError(f"{_names(attribute.name)} must be a whole number >= 0, got {value!r}")


def _one_of(*choices: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise SettingsError(
                f"{_names(attribute.name)} must be one of {', '.join(choices)}; got {value!r}"
            )

    return check


def _at_least(limit: float) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, int | float) and value < limit:
            raise SettingsError(f"{_names(attribute.name)} must be >= {limit:g}, got {value!r}")

    return check


def _at_most(limit: float) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, int | float) and value > limit:
            raise SettingsError(f"{_names(attribute.name)} must be <= {limit:g}, got {value!r}")

    return check


def _port(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not 0 <= value <= 65535:
        raise SettingsError(f"{_names(attribute.name)} must be 0..65535, got {value}")


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise SettingsError(f"{_names(attribute.name)} must be true or false, got {value!r}")


def _transfer_target(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """E.164 (``+`` and 8-15 digits) or a ``sip:``/``sips:`` URI."""
    if value is None:
        return
    if not isinstance(value, str) or not is_transfer_target(value):
        raise SettingsError(
            f"{_names(attribute.name)} must be an E.164 number (+15551230000) or a sip: URI, "
            f"got {value!r}"
        )


def _public_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An http(s) base URL: scheme, host, optional port and path; no query, fragment or user.
    (The value is not quoted back: a URL may carry credentials.)"""
    if value is None:
        return
    parts = urlsplit(value) if isinstance(value, str) else None
    try:
        valid = (
            parts is not None
            and parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and not (parts.query or parts.fragment or parts.username or parts.password)
            and (parts.port is None or parts.port > 0)
        )
    except ValueError:  # a port that is not a number, or out of range
        valid = False
    if not valid:
        raise SettingsError(
            f"{_names(attribute.name)} must be an http(s):// base URL such as "
            "https://voice.example.com (a path is allowed; no query, fragment or credentials)"
        )


def _auth_tokens(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """One token, or two separated by a comma (rotation); needs ``public_url`` (the signed URLs
    are rebuilt from it). The value is never quoted back: it is a secret."""
    if value is None:
        return
    tokens = value.split(",") if isinstance(value, str) else []
    if not 1 <= len(tokens) <= 2 or not all(token.strip() for token in tokens):
        raise SettingsError(
            f"{_names(attribute.name)} must be one auth token, or two separated by a comma "
            "(while rotating)"
        )
    if instance.public_url is None:
        raise SettingsError(
            f"{_names(attribute.name)} needs --public-url / VOXBRIDGE_PUBLIC_URL: Twilio signs "
            "the public URL it calls, and voxbridge rebuilds it from that setting, never from "
            "the request's Host header"
        )


def _carrier_names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else []
    unknown = [name for name in names if name not in CARRIER_SPECS]
    if not names or unknown or not all(names):
        raise SettingsError(
            f"--carriers must be a comma-separated list of {', '.join(CARRIER_SPECS)}, "
            f"got {value!r}"
        )


def _text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A string, or ``None`` where the field's default is ``None``. (Not quoted back: a provider
    URL may carry a key.)"""
    if value is None and attribute.default is None:
        return
    if not isinstance(value, str):
        raise SettingsError(f"{_names(attribute.name)} must be text, got {type(value).__name__}")


def _names(field: str) -> str:
    return f"--{field.replace('_', '-')} / VOXBRIDGE_{field.upper()}"


def _provider_help() -> str:
    """``--provider``'s help: the registry's names, each with its key variables."""
    choices = ", ".join(
        f"{spec.name} ({' or '.join(spec.key_variables) or 'no key'})"
        for spec in PROVIDER_SPECS.values()
    )
    return (
        f"voice-AI provider: {choices}; a key is read from the environment only (also "
        "VOXBRIDGE_<PROVIDER>_API_KEY)"
    )


def _voice_help() -> str:
    """``--voice``'s help: what each registered provider uses when it is unset."""
    defaults = "; ".join(
        f"{spec.name} {spec.voice or 'its own default'}" for spec in PROVIDER_SPECS.values()
    )
    return f"agent voice; unset, per provider: {defaults}"


def _help(text: str, *, secret: bool = False, cli: bool = True) -> dict[str, Any]:
    return {"help": text, "secret": secret, "cli": cli}


def _provider_settings(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return _nested("provider_settings", value)  # defined below the class, with its helpers


def _carrier_settings(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return _nested("carrier_settings", value)


@attrs.frozen(kw_only=True)
class Settings:
    """Everything a voxbridge process or an embedded call needs to know.

    Construct directly in code (``Settings(idle_timeout=5)``), or with :meth:`from_env` /
    :meth:`load` in a process. Invalid values raise :class:`SettingsError` at construction.
    """

    # --- serving ---------------------------------------------------------------------------------
    host: str = attrs.field(default="127.0.0.1", metadata=_help("bind address"))
    port: int = attrs.field(default=8080, validator=_port, metadata=_help("bind port (0 = any)"))
    public_url: str | None = attrs.field(
        default=None,
        validator=_public_url,
        metadata=_help("external https:// base Twilio uses (default: derived from host/port)"),
    )
    # --- who may call (voxbridge/server/security.py) ---------------------------------------------
    twilio_auth_token: str | None = attrs.field(
        default=None,
        repr=False,
        validator=_auth_tokens,
        metadata=_help(
            "Twilio auth token: enables signature checks and per-call tokens (a second, "
            "comma-separated token for rotation; prefer the environment variable)",
            secret=True,
        ),
    )
    call_token_ttl: float = attrs.field(
        default=60 * SECONDS,
        validator=_positive,
        metadata=_help("seconds the per-call token in the TwiML stays valid"),
    )
    carriers: str | None = attrs.field(
        default=None,
        validator=_carrier_names,
        metadata=_help(
            "comma-separated carriers to serve (default: every registered one); the routes of "
            "the others answer 404"
        ),
    )
    insecure: bool = attrs.field(
        default=False,
        validator=_boolean,
        metadata=_help(
            "allow a non-loopback --host without --twilio-auth-token, serving the --carriers "
            "without credentials there"
        ),
    )
    max_calls: int = attrs.field(
        default=500, validator=_positive, metadata=_help("admission cap per process")
    )
    drain_timeout: float = attrs.field(
        default=30 * SECONDS,
        validator=_non_negative,
        metadata=_help("on SIGTERM: how long running calls may continue"),
    )
    tcp_user_timeout: float = attrs.field(
        default=10 * SECONDS,
        validator=_positive,
        metadata=_help(
            "kernel deadline for unacknowledged data on carrier sockets (TCP_USER_TIMEOUT)"
        ),
    )
    gc_threshold: int = attrs.field(
        default=20_000,
        validator=_count,
        metadata=_help(
            "CPython's generation-0 collection threshold for the server process (CPython's own "
            "default is 700; 0 = leave it): fewer, shorter collector pauses at thousands of calls"
        ),
    )
    websocket_ping_interval: float = attrs.field(
        default=15 * SECONDS,
        validator=_non_negative,
        metadata=_help(
            "WebSocket pings to the carrier, so a proxy that times voxbridge's direction sees "
            "traffic while the agent is silent (<= 20 s; 0 = no pings)"
        ),
    )
    # --- provider --------------------------------------------------------------------------------
    provider: str = attrs.field(
        default="echo", validator=_one_of(*PROVIDERS), metadata=_help(_provider_help())
    )
    provider_url: str | None = attrs.field(
        default=None,
        validator=_text,
        metadata=_help(
            "override the provider endpoint: "
            + ", ".join(f"{spec.name} {spec.endpoint}" for spec in PROVIDER_SPECS.values())
        ),
    )
    voice: str | None = attrs.field(default=None, validator=_text, metadata=_help(_voice_help()))
    instructions: str = attrs.field(
        default="You are a helpful, concise phone assistant.",
        validator=_text,
        metadata=_help("agent instructions"),
    )
    instructions_file: str | None = attrs.field(
        default=None, validator=_text, metadata=_help("read the agent instructions from this file")
    )
    provider_settings: Mapping[str, Any] = attrs.field(
        factory=dict,
        converter=_provider_settings,
        metadata=_help("each provider's own settings (--<provider>-<field> flags)", cli=False),
    )
    # --- agents and tools (docs/agents.md) ---------------------------------------------------------
    agents: str | None = attrs.field(
        default=None,
        metadata=_help("TOML file of named agents (provider, voice, instructions, tools, ...)"),
    )
    tools_module: str | None = attrs.field(
        default=None,
        metadata=_help("import this Python module and offer its TOOLS (a list of voxbridge.Tool)"),
    )
    tool_timeout: float = attrs.field(
        default=10 * SECONDS,
        validator=_positive,
        metadata=_help("deadline for one tool call; beyond it the model gets an error result"),
    )
    transfer_to: str | None = attrs.field(
        default=None,
        validator=_transfer_target,
        metadata=_help("E.164 number or sip: URI: offers the transfer_call tool"),
    )
    twilio_account_sid: str | None = attrs.field(
        default=None,
        metadata=_help("Twilio account SID (AC...): REST for end_call, transfer_call and dial"),
    )
    twilio_api_key: str | None = attrs.field(
        default=None,
        repr=False,
        metadata=_help("Twilio API key SID (SK...), environment only", secret=True, cli=False),
    )
    twilio_api_secret: str | None = attrs.field(
        default=None,
        repr=False,
        metadata=_help("Twilio API key secret, environment only", secret=True, cli=False),
    )
    twilio_api_url: str | None = attrs.field(
        default=None,
        validator=_public_url,
        metadata=_help("Twilio REST base URL (default https://api.twilio.com; for tests)"),
    )
    # --- carriers (voxbridge/carriers/registry.py; Twilio's are the twilio_* fields above) --------
    carrier_settings: Mapping[str, Any] = attrs.field(
        factory=dict,
        converter=_carrier_settings,
        metadata=_help("each carrier's own settings (--<carrier>-<field> flags)", cli=False),
    )
    # --- deadlines (docs/timeouts.md explains each) ----------------------------------------------
    idle_timeout: float = attrs.field(
        default=60 * SECONDS,
        validator=_positive,
        metadata=_help("seconds without any carrier frame before the call ends (idle_timeout)"),
    )
    start_timeout: float = attrs.field(
        default=10 * SECONDS,
        validator=_positive,
        metadata=_help("seconds from accept to the carrier's start event (start_timeout)"),
    )
    max_call_duration: float = attrs.field(
        default=3600 * SECONDS,
        validator=_positive,
        metadata=_help("hard cap per call in seconds (max_duration)"),
    )
    keepalive_interval: float = attrs.field(
        default=20 * SECONDS, validator=_positive, metadata=_help("upstream ping cadence")
    )
    pong_timeout: float = attrs.field(
        default=10 * SECONDS,
        validator=_positive,
        metadata=_help("upstream pong deadline (upstream_keepalive_timeout)"),
    )
    send_timeout: float = attrs.field(
        default=5 * SECONDS,
        validator=_positive,
        metadata=_help("deadline for one send to either peer (caller_stalled / upstream_stalled)"),
    )
    connect_timeout: float = attrs.field(
        default=10 * SECONDS,
        validator=_positive,
        metadata=_help("deadline to open the provider session (upstream_connect_failed)"),
    )
    reconnect_budget: float = attrs.field(
        default=5 * SECONDS,
        validator=_non_negative,
        metadata=_help("how long a call may spend resuming a dropped provider session (0 = never)"),
    )
    session_max_age: float = attrs.field(
        default=55 * 60 * SECONDS,
        validator=[_positive, _at_least(MIN_SESSION_AGE)],
        metadata=_help(
            "recycle a provider session this old (OpenAI ends them at 60 min; "
            f"at least {MIN_SESSION_AGE:g})"
        ),
    )
    close_timeout: float = attrs.field(
        default=2 * SECONDS,
        validator=_positive,
        metadata=_help("deadline for each close handshake during teardown"),
    )
    farewell_timeout: float = attrs.field(
        default=5 * SECONDS,
        validator=_non_negative,
        metadata=_help(
            "on agent_hangup: how long to wait for the carrier to confirm (mark echo) that the "
            "caller heard the goodbye before closing (0 = close at once)"
        ),
    )
    upstream_batch_ms: float = attrs.field(
        default=0,
        validator=[_non_negative, _at_most(MAX_UPSTREAM_BATCH_MS)],
        metadata=_help(
            "opt-in: send caller audio upstream in batches of up to this many ms "
            f"(adds up to that much latency; 0 = off, at most {MAX_UPSTREAM_BATCH_MS})"
        ),
    )
    marks: str = attrs.field(
        default="exact",
        validator=_one_of(*MARK_MODES),
        metadata=_help(
            "exact: a mark after every media message to the caller; sparse: one at the start "
            "and the end of each burst and every 500 ms of audio, the heard position between "
            "them from a playout model (fewer messages; carriers with marks only)"
        ),
    )
    # --- journal and logs ------------------------------------------------------------------------
    db: str = attrs.field(
        default="voxbridge.db",
        metadata=_help(
            "journal location: a SQLite path, or a PostgreSQL DSN (postgresql://... or "
            "host=... dbname=...)"
        ),
    )
    log_format: str = attrs.field(
        default="console", validator=_one_of(*LOG_FORMATS), metadata=_help("console or json")
    )
    log_level: str = attrs.field(default="info", metadata=_help("debug, info, warning, error"))

    def agent_instructions(self) -> str:
        """The instructions text, read from ``instructions_file`` when one is set.

        Raises:
            SettingsError: the file cannot be read.
        """
        if self.instructions_file is None:
            return self.instructions
        try:
            with open(self.instructions_file, encoding="utf-8") as file:
                return file.read().strip()
        except OSError as exc:
            raise SettingsError(
                f"--instructions-file / VOXBRIDGE_INSTRUCTIONS_FILE: cannot read "
                f"{self.instructions_file!r}: {exc.strerror}"
            ) from None

    @property
    def twilio_rest_credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` for Twilio's REST API, or ``None`` when it cannot be used.

        Twilio's recommended credentials are an API key and its secret; without them, the
        account SID and the (first) auth token. Either way ``twilio_account_sid`` is needed.
        """
        if not self.twilio_account_sid:
            return None
        if self.twilio_api_key and self.twilio_api_secret:
            return (self.twilio_api_key, self.twilio_api_secret)
        tokens = self.twilio_auth_tokens
        return (self.twilio_account_sid, tokens[0]) if tokens else None

    @property
    def teardown_timeout(self) -> float:
        """The bound on the whole teardown: the provider's goodbye, two close handshakes, a margin."""
        return 3 * self.close_timeout + 1 * SECONDS

    @property
    def enabled_carriers(self) -> tuple[str, ...]:
        """``carriers`` as a tuple of names; every registered carrier when unset."""
        if self.carriers is None:
            return tuple(CARRIER_SPECS)
        return tuple(dict.fromkeys(name.strip() for name in self.carriers.split(",")))

    @property
    def twilio_auth_tokens(self) -> tuple[str, ...]:
        """``twilio_auth_token`` split for rotation: ``()`` when unset, else one or two tokens
        (the first signs new per-call tokens; a signature or token valid under either passes)."""
        if self.twilio_auth_token is None:
            return ()
        return tuple(token.strip() for token in self.twilio_auth_token.split(","))

    @classmethod
    def cli_fields(cls) -> list[attrs.Attribute[Any]]:
        """The fields exposed as ``voxbridge serve`` flags, in declaration order."""
        return [f for f in attrs.fields(cls) if f.metadata.get("cli", True)]

    def for_provider(self, name: str | None = None, **changes: Any) -> Settings:
        """These settings with provider ``name`` selected (default: the current one) and
        ``changes`` made to its own settings, e.g. ``for_provider("openai", api_key=key)``.

        Raises:
            SettingsError: an unknown provider, field or value.
        """
        name = self.provider if name is None else name
        own = {
            **self.provider_settings,
            name: {**_as_dict(self.provider_settings.get(name), f"provider {name!r}"), **changes},
        }
        return attrs.evolve(self, provider=name, provider_settings=own)

    def for_carrier(self, name: str, **changes: Any) -> Settings:
        """These settings with ``changes`` made to carrier ``name``'s own settings, e.g.
        ``for_carrier("telnyx", api_key=key)``.

        Raises:
            SettingsError: an unknown carrier, field or value.
        """
        own = {
            **self.carrier_settings,
            name: {**_as_dict(self.carrier_settings.get(name), f"carrier {name!r}"), **changes},
        }
        return attrs.evolve(self, carrier_settings=own)

    @classmethod
    def options(cls) -> list[Option]:
        """Every provider's (and carrier's) own settings fields, with their flat names
        (``openai_model``: ``--openai-model``, ``VOXBRIDGE_OPENAI_MODEL``), in registry order."""
        return [
            Option(group, spec, field)
            for group, specs in GROUPS.items()
            for spec in specs.values()
            for field in attrs.fields(spec.settings)
        ]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``VOXBRIDGE_*`` variables (and aliases, and each provider's key
        variables), then ``overrides`` on top.

        ``overrides`` are field names, or a provider setting's flat name (``openai_model``);
        ``None`` values are ignored (an absent flag).

        Raises:
            SettingsError: a variable does not parse or is out of range.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            names = [f"VOXBRIDGE_{field.name.upper()}", *ENV_ALIASES.get(field.name, ())]
            raw, source = _first(env, names)
            if source:
                values[field.name] = _parse(field, raw, source=source)
        nested: dict[str, dict[str, dict[str, Any]]] = {
            group: {name: {} for name in specs} for group, specs in GROUPS.items()
        }
        for option in cls.options():
            own = nested[option.group][option.spec.name]
            raw, source = _first(env, option.variables)
            if source:
                own[option.field.name] = _parse(option.field, raw, source=source)
            flat = overrides.pop(option.name, None)
            if flat is not None:
                own[option.field.name] = flat
        for group, by_name in nested.items():
            given = overrides.pop(group, None) or {}
            if not isinstance(given, Mapping):
                raise SettingsError(f"{group} must map names to settings, got {_kind(given)}")
            for name, changes in given.items():
                by_name.setdefault(name, {}).update(_as_dict(changes, f"{group}[{name!r}]"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.update(nested)
        return cls(**values)


@attrs.frozen
class Option:
    """One field of a provider's (or carrier's) own settings, as a flag and variables.

    ``group`` is the :class:`Settings` field that holds it (``provider_settings``).
    """

    group: str
    spec: Any  # a ProviderSpec or CarrierSpec: name, settings, key_variables, flag_prefix()
    field: attrs.Attribute[Any]

    @property
    def name(self) -> str:
        """The flat name: ``openai_model``, ``gpt_live_tools_model``."""
        return str(self.spec.flag_prefix()) + self.field.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def names(self) -> str:
        """How an error names it: ``--gemini-model / VOXBRIDGE_GEMINI_MODEL``; a secret, which
        has no flag, by its variables (``VOXBRIDGE_GEMINI_API_KEY / GEMINI_API_KEY / ...``)."""
        if self.field.metadata.get("cli", True):
            return f"{self.flag} / {self.variables[0]}"
        return " / ".join(self.variables)

    @property
    def variables(self) -> tuple[str, ...]:
        """``VOXBRIDGE_<NAME>``, then the field's own vendor variables (its ``env`` metadata,
        e.g. ``PLIVO_AUTH_TOKEN``), then, for an ``api_key``, the spec's key variables."""
        keys: tuple[str, ...] = self.spec.key_variables if self.field.name == "api_key" else ()
        own: tuple[str, ...] = tuple(self.field.metadata.get("env", ()))
        return (f"VOXBRIDGE_{self.name.upper()}", *own, *keys)


def _first(env: Mapping[str, str], names: Sequence[str]) -> tuple[str, str]:
    """The first of ``names`` set (non-empty) in ``env``: ``(value, name)``, else ``("", "")``."""
    for name in names:
        raw = env.get(name)
        if raw:
            return raw, name
    return "", ""


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    """Own settings as a dict: ``value`` is a dict, a settings instance or ``None``.

    Raises:
        SettingsError: it is none of these (``what`` names it in the message).
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if attrs.has(type(value)):
        return attrs.asdict(value, recurse=False)
    raise SettingsError(
        f"{what} must be a dict of its settings or its settings class, got {_kind(value)}"
    )


def _kind(value: Any) -> str:
    """A value's type, for a message that must not quote the value (it may be a key)."""
    return type(value).__name__


#: Annotation word -> (is this value one, how a message says it).
_SCALARS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "text"),
    "int": (lambda v: type(v) is int, "a whole number"),
    "float": (lambda v: type(v) in (int, float), "a number"),
    "bool": (lambda v: type(v) is bool, "true or false"),
    "None": (lambda v: v is None, "unset (None)"),
}


def _check_option(group: str, spec: Any, field: attrs.Attribute[Any], value: Any) -> None:
    """``value`` has the field's declared type (``str | None``, ``int``, ...): a scalar of
    :data:`_SCALARS`, the only kinds a flag or variable can give. A type made of other words is
    not checked.

    Raises:
        SettingsError: it does not, naming the flag and variables (never the value).
    """
    words = [word.strip() for word in str(field.type).split("|")]
    if not all(word in _SCALARS for word in words):
        return
    if any(_SCALARS[word][0](value) for word in words):
        return
    wanted = " or ".join(_SCALARS[word][1] for word in words)
    option = Option(group, spec, field)
    raise SettingsError(f"{option.names} must be {wanted}, got {_kind(value)}")


def _nested(group: str, value: Mapping[str, Any]) -> Mapping[str, Any]:
    """Every registered spec's settings instance for ``group``, from partial dicts or
    instances (read-only).

    Raises:
        SettingsError: an unknown name or field, or a value its settings class refuses.
    """
    specs = GROUPS[group]
    if not isinstance(value, Mapping):
        raise SettingsError(f"{group} must map names to settings, got {_kind(value)}")
    unknown = [name for name in value if name not in specs]
    if unknown:
        raise SettingsError(f"{group}: unknown {unknown[0]!r} (known: {', '.join(specs)})")
    built: dict[str, Any] = {}
    for name, spec in specs.items():
        given = value.get(name)
        fields = {f.name: f for f in attrs.fields(spec.settings)}
        if isinstance(given, spec.settings):
            changes = attrs.asdict(given, recurse=False)
        else:
            flags = f"--{spec.flag_prefix()}*".replace("_", "-")
            changes = _as_dict(given, f"{group}[{name!r}] (its {flags} flags)")
        strange = sorted(str(key) for key in set(changes) - set(fields))
        if strange:
            raise SettingsError(
                f"--{spec.flag_prefix()}{strange[0]}".replace("_", "-")
                + f": {name} has no setting {strange[0]!r} "
                f"(it has {', '.join(sorted(fields)) or 'none'})"
            )
        for key, change in changes.items():
            _check_option(group, spec, fields[key], change)
        built[name] = given if isinstance(given, spec.settings) else spec.settings(**changes)
    return MappingProxyType(built)


#: The nested settings groups: :class:`Settings` field -> its registry (name -> spec).
GROUPS: dict[str, Mapping[str, Any]] = {
    "provider_settings": PROVIDER_SPECS,
    "carrier_settings": CARRIER_SPECS,
}


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse(field: attrs.Attribute[Any], raw: str, *, source: str) -> Any:
    kind = scalar_type(field)
    if kind is bool:
        word = raw.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise SettingsError(f"{source}={raw!r}: expected 1/true/yes/on or 0/false/no/off")
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{source}={raw!r}: expected {kind.__name__}") from None


def scalar_type(field: attrs.Attribute[Any]) -> type:
    """The scalar type of a field (its annotation is a string under postponed evaluation)."""
    annotation = str(field.type)
    if annotation.startswith("bool"):
        return bool
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str
