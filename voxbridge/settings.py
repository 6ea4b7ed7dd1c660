"""Settings: one frozen value, built from defaults < environment < command-line flags.

Every field that an operator may set has a CLI flag (``--idle-timeout``) and an environment variable
(``VOXBRIDGE_IDLE_TIMEOUT``); both are derived from the field name, so the tables in docs/timeouts.md
and docs/operations.md and ``voxbridge serve --help`` cannot drift apart (tests/test_docs_examples.py
checks the docs against the fields). Durations are seconds (floats), sizes are bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = ["PROVIDERS", "Settings", "SettingsError"]

SECONDS = 1.0
#: The default OpenAI Realtime model and caller-transcription model: current GA names in the
#: ``openai`` package's types, with no announced shutdown (tests/test_openai_realtime.py checks).
OPENAI_MODEL = "gpt-realtime-2.1"
TRANSCRIPTION_MODEL = "gpt-transcribe"
PROVIDERS = ("echo", "openai", "ultravox", "gpt-live", "deepgram", "gemini")
OPENAI_FLAVOURS = ("ga",)
#: The OpenAI Realtime beta interface (``OpenAI-Beta: realtime=v1``) was shut down in 2026.
BETA_GONE = (
    "--openai-flavour / VOXBRIDGE_OPENAI_FLAVOUR: the OpenAI Realtime beta interface was shut "
    "down in 2026; use ga (the default: the GA interface at /v1/realtime)"
)
LOG_FORMATS = ("console", "json")
MAX_UPSTREAM_BATCH_MS = 500  # beyond half a second, batching would wreck turn-taking
MIN_SESSION_AGE = 1 * SECONDS  # below that, recycling would open sessions in a tight loop

#: The environment variables each provider key is read from (besides VOXBRIDGE_<NAME>): keys are
#: environment only, never flags, so they never appear in a process list.
KEY_VARIABLES: dict[str, tuple[str, ...]] = {
    "openai_api_key": ("OPENAI_API_KEY",),
    "ultravox_api_key": ("ULTRAVOX_API_KEY",),
    "deepgram_api_key": ("DEEPGRAM_API_KEY",),
    "gemini_api_key": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}

# Environment variables that are aliases of a setting, for operators coming from other bridges.
ENV_ALIASES: dict[str, tuple[str, ...]] = {"idle_timeout": ("WS_IDLE_TIMEOUT_SECONDS",)}


class SettingsError(ValueError):
    """A setting has a value voxbridge cannot run with. The message names the flag and env var."""


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


def _flavour(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value == "beta":
        raise SettingsError(BETA_GONE)
    _one_of(*OPENAI_FLAVOURS)(instance, attribute, value)


def _transfer_target(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """E.164 (``+`` and 8-15 digits) or a ``sip:``/``sips:`` URI."""
    if value is None:
        return
    if not isinstance(value, str) or not is_transfer_target(value):
        raise SettingsError(
            f"{_names(attribute.name)} must be an E.164 number (+15551230000) or a sip: URI, "
            f"got {value!r}"
        )


def is_transfer_target(value: str) -> bool:
    """Whether ``value`` is an E.164 number or a ``sip:``/``sips:`` URI with a host."""
    if value.startswith("+"):
        return value[1:].isdigit() and value[1:].isascii() and 8 <= len(value) - 1 <= 15
    scheme, _, rest = value.partition(":")
    return (
        scheme.lower() in ("sip", "sips") and "@" in rest and not any(c in rest for c in ' <>"\n\r')
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


def _names(field: str) -> str:
    return f"--{field.replace('_', '-')} / VOXBRIDGE_{field.upper()}"


def _help(text: str, *, secret: bool = False, cli: bool = True) -> dict[str, Any]:
    return {"help": text, "secret": secret, "cli": cli}


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
    insecure: bool = attrs.field(
        default=False,
        validator=_boolean,
        metadata=_help("allow a non-loopback --host without --twilio-auth-token"),
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
        validator=_positive,
        metadata=_help("WebSocket pings to the carrier, so proxies see traffic (<= 20 s)"),
    )
    # --- provider --------------------------------------------------------------------------------
    provider: str = attrs.field(
        default="echo", validator=_one_of(*PROVIDERS), metadata=_help("voice-AI provider")
    )
    provider_url: str | None = attrs.field(
        default=None,
        metadata=_help(
            "override the provider endpoint: OpenAI/echo ws(s)://.../v1/realtime, "
            "Ultravox REST base http(s)://.../api"
        ),
    )
    openai_model: str = attrs.field(
        default=OPENAI_MODEL, metadata=_help("OpenAI Realtime model (GA)")
    )
    openai_flavour: str = attrs.field(
        default="ga",
        validator=_flavour,
        metadata=_help("OpenAI Realtime API: ga (the beta interface was shut down in 2026)"),
    )
    transcription_model: str = attrs.field(
        default=TRANSCRIPTION_MODEL, metadata=_help("OpenAI model that transcribes the caller")
    )
    ultravox_model: str | None = attrs.field(
        default=None, metadata=_help("Ultravox model (default: Ultravox's own default)")
    )
    voice: str | None = attrs.field(
        default=None, metadata=_help("agent voice (default: alloy for OpenAI, Ultravox's default)")
    )
    instructions: str = attrs.field(
        default="You are a helpful, concise phone assistant.",
        metadata=_help("agent instructions"),
    )
    instructions_file: str | None = attrs.field(
        default=None, metadata=_help("read the agent instructions from this file")
    )
    openai_api_key: str | None = attrs.field(
        default=None, repr=False, metadata=_help("OpenAI key", secret=True, cli=False)
    )
    ultravox_api_key: str | None = attrs.field(
        default=None, repr=False, metadata=_help("Ultravox key", secret=True, cli=False)
    )
    deepgram_api_key: str | None = attrs.field(
        default=None, repr=False, metadata=_help("Deepgram key", secret=True, cli=False)
    )
    gemini_api_key: str | None = attrs.field(
        default=None,
        repr=False,
        metadata=_help("Gemini API key (also GOOGLE_API_KEY)", secret=True, cli=False),
    )
    gpt_live_model: str = attrs.field(default="gpt-live-1", metadata=_help("OpenAI GPT-Live model"))
    gpt_live_tools_model: str | None = attrs.field(
        default=None,
        metadata=_help(
            "GPT-Live: the Responses model that runs tools for the live model (unset: no tools)"
        ),
    )
    gemini_model: str | None = attrs.field(
        default=None, metadata=_help("Gemini Live model (default: a current native-audio model)")
    )
    deepgram_think_model: str | None = attrs.field(
        default=None, metadata=_help("Deepgram Voice Agent: the LLM that thinks (think.provider)")
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``VOXBRIDGE_*`` variables (and aliases), then ``overrides`` on top.

        Raises:
            SettingsError: a variable does not parse or is out of range.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            names = [f"VOXBRIDGE_{field.name.upper()}", *ENV_ALIASES.get(field.name, ())]
            names.extend(KEY_VARIABLES.get(field.name, ()))
            for name in names:
                raw = env.get(name)
                if raw is not None and raw != "":
                    values[field.name] = _parse(field, raw, source=name)
                    break
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


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
