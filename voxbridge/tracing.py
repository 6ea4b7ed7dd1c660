"""Traces, optional: a tiny facade over OpenTelemetry that costs nothing when it is off.

Off is the default, and then no ``opentelemetry`` module is even imported: :func:`tracer` returns
a :class:`Tracer` whose every span is the shared no-op :data:`NO_SPAN`, entered through one shared
no-op context manager (no allocation). ``voxbridge serve`` turns tracing on with
:func:`configure_from_env` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the ``otel`` extra is
installed; an embedder hands its own ``TracerProvider`` to :func:`use`.

Spans are for the call and for rare events only, never per audio frame (docs/observability.md):

    voxbridge.call                  SERVER, accept to the end of accounting
    ├── voxbridge.provider.connect  CLIENT, one per attempt to open a provider session
    ├── voxbridge.provider.resume   a dropped session replaced (its connect attempts inside)
    ├── voxbridge.provider.recycle  an old session replaced, make before break (likewise)
    ├── voxbridge.barge_in          the caller talked over the agent: clear and truncate
    └── execute_tool {name}         one tool call (OpenTelemetry GenAI semantic conventions)

Parents come from context, not from arguments: OpenTelemetry keeps the current span in a context
variable, a span opened with :meth:`Tracer.span` is current inside its ``with`` block, and trio
copies a task's context into every task it starts -- so the call's span, current in
``Call.run``, is the parent of spans opened in the call's tasks, and a resume's span the parent of
the connect attempts it makes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the otel extra: imported only once tracing is on
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import TracerProvider

__all__ = [
    "NO_SPAN",
    "Span",
    "Tracer",
    "configure_from_env",
    "current_span",
    "enabled",
    "shutdown",
    "tracer",
    "use",
]

log = logging.getLogger("voxbridge.tracing")

#: A span attribute's value (OpenTelemetry also takes sequences of these; voxbridge does not).
AttributeValue = str | bool | int | float
#: A span's kind: ``"server"`` (the call, which the carrier opened), ``"client"`` (a connection
#: voxbridge opens), ``"internal"`` (the rest).
Kind = Literal["internal", "server", "client"]

#: The instrumentation scope's name.
SCOPE = "voxbridge"


class Span:
    """A span of the facade. This base class is the no-op one (:data:`NO_SPAN`): tracing is off,
    or the span is not recorded. Methods never raise."""

    __slots__ = ()

    #: False for the no-op span: skip building attributes nobody records.
    recording: bool = False

    def set(self, key: str, value: AttributeValue) -> None:
        """Set attribute ``key`` to ``value``."""

    def set_many(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set several attributes."""

    def fail(self, error_type: str, description: str = "") -> None:
        """Mark the span failed: ``error.type`` = ``error_type`` (a short, low-cardinality class of
        error such as a ``Reason`` value) and status ERROR with ``description``."""


NO_SPAN = Span()


class _NoScope:
    """The no-op tracer's ``with`` block: yields :data:`NO_SPAN`, allocates nothing."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return NO_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SCOPE = _NoScope()


class Tracer:
    """Starts spans. This base class is the no-op tracer :func:`tracer` returns when off."""

    __slots__ = ()

    #: True when spans are recorded and exported.
    enabled: bool = False

    def span(
        self,
        name: str,
        *,
        kind: Kind = "internal",
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> AbstractContextManager[Span]:
        """A span named ``name``, current within the ``with`` block and ended at its exit.

        An exception leaving the block neither records itself nor sets the status (a cancelled
        call is not a failed one): use :meth:`Span.fail`.
        """
        return _NO_SCOPE


class _Recording(Span):
    __slots__ = ("_span",)

    recording = True

    def __init__(self, span: OtelSpan) -> None:
        self._span = span

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_many(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._span.set_attributes(attributes)

    def fail(self, error_type: str, description: str = "") -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR, description or None))


class _OtelTracer(Tracer):
    __slots__ = ("_kinds", "_tracer")

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind

        from . import __version__

        self._tracer = provider.get_tracer(SCOPE, __version__)
        self._kinds = {
            "internal": SpanKind.INTERNAL,
            "server": SpanKind.SERVER,
            "client": SpanKind.CLIENT,
        }

    def span(
        self,
        name: str,
        *,
        kind: Kind = "internal",
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> AbstractContextManager[Span]:
        return self._open(name, kind, attributes)

    @contextmanager
    def _open(
        self, name: str, kind: Kind, attributes: Mapping[str, AttributeValue] | None
    ) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            name,
            kind=self._kinds[kind],
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield _Recording(span)


_OFF = Tracer()
_tracer: Tracer = _OFF
_configured: SdkTracerProvider | None = None  # the provider configure_from_env made


def tracer() -> Tracer:
    """The tracer voxbridge uses: the no-op one unless :func:`use` or
    :func:`configure_from_env` turned tracing on. Read it once per call, not per frame."""
    return _tracer


def enabled() -> bool:
    """True when voxbridge records spans."""
    return _tracer.enabled


def current_span() -> Span:
    """The span current in this task (the innermost ``with tracer().span(...)``), or
    :data:`NO_SPAN` when tracing is off or no recorded span is current."""
    if not _tracer.enabled:
        return NO_SPAN
    from opentelemetry import trace

    span = trace.get_current_span()
    return _Recording(span) if span.is_recording() else NO_SPAN


def use(provider: TracerProvider | None) -> None:
    """Record voxbridge's spans with ``provider`` from now on; ``None`` turns tracing off.

    For embedders with their own OpenTelemetry set-up (``use(trace.get_tracer_provider())``) and
    tests (an SDK provider with an in-memory exporter). Calls already running keep the tracer
    they started with.
    """
    global _tracer
    _tracer = _OFF if provider is None else _OtelTracer(provider)


def configure_from_env() -> bool:
    """Turn tracing on for ``voxbridge serve`` if the environment asks for it.

    On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set,
    unless ``OTEL_SDK_DISABLED=true``: an SDK ``TracerProvider`` whose resource is read from the
    ``OTEL_*`` variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; ``service.name``
    defaults to ``voxbridge``), exporting through a ``BatchSpanProcessor`` and the OTLP/HTTP
    exporter (which reads its own ``OTEL_EXPORTER_OTLP_*`` variables: headers, timeout,
    compression). It also becomes OpenTelemetry's global provider, so spans a tool opens nest
    under the tool call's. Call :func:`shutdown` at exit to export what is still queued.

    Returns:
        True if tracing is now on. False if not asked, or asked without the ``otel`` extra
        installed: then one warning is logged and the server runs untraced.
    """
    global _configured
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed (no module "
            "%r): no traces; install voxbridge[otel]",
            exc.name,
        )
        return False
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SCOPE}))  # the environment named none
    provider = SdkProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = provider
    use(provider)
    return True


def shutdown() -> None:
    """Export the spans still queued and stop the provider :func:`configure_from_env` made
    (bounded by the exporter's timeouts); tracing is off afterwards. A no-op otherwise."""
    global _configured
    provider, _configured = _configured, None
    if provider is not None:
        use(None)
        provider.shutdown()
