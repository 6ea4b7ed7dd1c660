"""Every Prometheus metric voxbridge exports, defined once, on an injected registry.

Library code never touches prometheus-client's global registry: a process (``voxbridge serve``)
creates one ``CollectorRegistry`` and hands it here; an embedding app can pass its own, and tests get
a fresh one each. Every label value is pre-initialised so a scrape shows a 0 series before the first
event (``rate()`` over a series that appears late misses its first increment).

A private registry (none passed in) also carries prometheus-client's process collector
(``process_open_fds``, ``process_resident_memory_bytes``, ...: the leaked-connections alert compares
open file descriptors with active calls). A registry passed in is left as its owner made it:
prometheus-client's global ``REGISTRY`` already has one, and a second would be a duplicate.
docs/metrics.md describes every family.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from .carriers.registry import CARRIERS as CARRIER_SPECS
from .errors import Reason
from .providers.registry import PROVIDERS as PROVIDER_SPECS
from .tools import BUILTIN_TOOLS, OUTCOMES

__all__ = [
    "CARRIERS",
    "DIRECTIONS",
    "PROVIDER_DROPS",
    "REJECTIONS",
    "UNKNOWN_TOOL",
    "USAGE_KINDS",
    "Metrics",
]

#: The ``tool`` label of a call to a tool that was not offered (the model's name is not a label).
UNKNOWN_TOOL = "unknown"

DIRECTIONS = ("to_upstream", "to_caller")
REJECTIONS = ("bad_signature", "capacity", "draining", "duplicate", "bad_request")
RECONNECT_OUTCOMES = ("resumed", "failed")
#: The ``carrier`` label values: every registered carrier (voxbridge/carriers/registry.py), read
#: when a :class:`Metrics` is made (the registry itself: iterating it gives the names).
CARRIERS = CARRIER_SPECS
#: The ``provider`` label values: every registered provider (voxbridge/providers/registry.py).
PROVIDERS = tuple(PROVIDER_SPECS)
#: Why a provider frame was dropped: not a valid frame of the protocol; audio that failed
#: validation (not strict base64, not whole 16-bit samples); audio of an answer the caller
#: interrupted, arriving after the barge-in.
PROVIDER_DROPS = ("malformed", "bad_audio", "late_audio")
#: Usage kinds each provider reports (``voxbridge_provider_usage_total{kind}``), as its spec
#: declares them: OpenAI Realtime and Gemini token counts, Ultravox's and GPT-Live's billed seconds.
USAGE_KINDS: dict[str, tuple[str, ...]] = {
    name: spec.usage_kinds for name, spec in PROVIDER_SPECS.items() if spec.usage_kinds
}

# Calls last seconds to an hour; the buckets are chosen for that range.
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
_CONNECT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, float("inf"))
_RTT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, float("inf"))


class Metrics:
    """The metric families, bound to one registry.

    Args:
        registry: where to register; if omitted, a new private registry that also carries
            prometheus-client's process collector (``process_*``).

    Raises:
        ValueError: ``registry`` already holds a voxbridge family (prometheus-client's
            duplicate check).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
        self.registry = registry
        r = self.registry
        self.calls_active = Gauge("voxbridge_calls_active", "Calls in progress.", registry=r)
        self.draining = Gauge(
            "voxbridge_draining",
            "1 once the process drains (SIGTERM: no new calls, running ones finishing), else 0.",
            registry=r,
        )
        # The drain alert's timestamp idiom: `time() - started > timeout + margin` fires on a
        # stuck drain whatever --drain-timeout is (a fixed `for:` cannot).
        self.drain_started = Gauge(
            "voxbridge_drain_started_timestamp_seconds",
            "When the drain began, in seconds since the epoch; 0 while not draining.",
            registry=r,
        )
        self.drain_timeout = Gauge(
            "voxbridge_drain_timeout_seconds",
            "How long a drain lets running calls go on (--drain-timeout), in seconds.",
            registry=r,
        )
        self.calls_started = Counter(
            "voxbridge_calls_started",
            "Calls accepted and started.",
            ["carrier", "provider"],
            registry=r,
        )
        self.call_disconnects = Counter(
            "voxbridge_call_disconnects",
            "Calls ended, by reason (closed set).",
            ["reason"],
            registry=r,
        )
        self.call_duration = Histogram(
            "voxbridge_call_duration_seconds",
            "Call duration from accept to teardown, by reason.",
            ["reason"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.connections_rejected = Counter(
            "voxbridge_connections_rejected",
            "Connections turned away before a call started, by reason.",
            ["reason"],
            registry=r,
        )
        self.media_frames = Counter(
            "voxbridge_media_frames",
            "Audio frames relayed, by direction.",
            ["direction"],
            registry=r,
        )
        self.media_frames_dropped = Counter(
            "voxbridge_media_frames_dropped",
            "Audio frames dropped, by direction (caller audio while a provider session resumes).",
            ["direction"],
            registry=r,
        )
        self.provider_frames_dropped = Counter(
            "voxbridge_provider_frames_dropped",
            "Provider frames dropped, by provider and reason (malformed, bad_audio, late_audio).",
            ["provider", "reason"],
            registry=r,
        )
        self.upstream_connect_seconds = Histogram(
            "voxbridge_upstream_connect_seconds",
            "Time to open a provider session (REST call creation, TCP, TLS, handshake, opening frames).",
            ["provider"],
            buckets=_CONNECT_BUCKETS,
            registry=r,
        )
        self.upstream_reconnects = Counter(
            "voxbridge_upstream_reconnects",
            "Provider sessions that dropped mid-call, by how resuming them ended.",
            ["outcome"],
            registry=r,
        )
        self.upstream_ping_rtt = Histogram(
            "voxbridge_upstream_ping_rtt_seconds",
            "Round-trip time of WebSocket pings to the provider.",
            buckets=_RTT_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter(
            "voxbridge_barge_ins", "Times the caller interrupted the agent.", registry=r
        )
        self.tool_calls = Counter(
            "voxbridge_tool_calls",
            "Tool calls by the agent, by tool and outcome (ok, error, timeout, unknown_tool, "
            "bad_arguments). A tool the model names but was not offered counts as tool "
            '"unknown".',
            ["tool", "outcome"],
            registry=r,
        )
        self.provider_usage = Counter(
            "voxbridge_provider_usage",
            "Provider usage as the provider reports it, by kind (tokens, billed seconds).",
            ["provider", "kind"],
            registry=r,
        )
        self.dtmf_digits = Counter(
            "voxbridge_dtmf_digits",
            "Keys the caller pressed (DTMF), forwarded to the agent or not.",
            registry=r,
        )
        self.journal_write_errors = Counter(
            "voxbridge_journal_write_errors", "Journal writes that failed.", registry=r
        )
        self.journal_crash_marks = Counter(
            "voxbridge_journal_crash_marks",
            "Calls this process marked crashed in the journal: left live by an earlier run "
            "(SQLite) or by a replica that is gone (PostgreSQL).",
            registry=r,
        )
        self._preinitialise()

    def _preinitialise(self) -> None:
        for reason in Reason:
            self.call_disconnects.labels(reason=reason.value)
            self.call_duration.labels(reason=reason.value)
        for carrier in CARRIERS:
            for provider in PROVIDERS:
                self.calls_started.labels(carrier=carrier, provider=provider)
        for rejection in REJECTIONS:
            self.connections_rejected.labels(reason=rejection)
        for direction in DIRECTIONS:
            self.media_frames.labels(direction=direction)
            self.media_frames_dropped.labels(direction=direction)
        for provider in PROVIDERS:
            self.upstream_connect_seconds.labels(provider=provider)
            for drop in PROVIDER_DROPS:
                self.provider_frames_dropped.labels(provider=provider, reason=drop)
        for outcome in RECONNECT_OUTCOMES:
            self.upstream_reconnects.labels(outcome=outcome)
        for provider, kinds in USAGE_KINDS.items():
            for kind in kinds:
                self.provider_usage.labels(provider=provider, kind=kind)
        self.declare_tools(BUILTIN_TOOLS)

    def declare_tools(self, names: Iterable[str]) -> None:
        """Pre-initialise ``voxbridge_tool_calls_total`` for tools offered by this process."""
        for name in (*names, UNKNOWN_TOOL):
            for outcome in OUTCOMES:
                self.tool_calls.labels(tool=name, outcome=outcome)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)
