"""Traces: the call's span and its children, recorded by the OpenTelemetry SDK's in-memory exporter
from real calls (simulator -> bridge -> the OpenAI fake, in memory, on the autojump clock); the
OTLP/HTTP export ``voxbridge serve`` configures, received by a real HTTP server on loopback; and,
with tracing off, not one ``opentelemetry`` module imported.

Needs the ``otel`` extra (``pip install -e '.[dev]'`` has it); without it the SDK tests skip.
"""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from test_call_providers import BuggyProvider, bridged, served

from voxbridge import tracing
from voxbridge.audio import tone
from voxbridge.errors import Reason
from voxbridge.settings import Settings
from voxbridge.testing.fake_openai import FakeOpenAIRealtime, FakeToolCall
from voxbridge.tools import Tool, ToolContext

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

SILENCE = b"\xff" * 8000
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """voxbridge traces into an SDK provider with an in-memory exporter for the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


def named(finished: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def lookup(arguments: dict[str, Any], context: ToolContext) -> object:
    return {"status": "shipped"}


async def broken(arguments: dict[str, Any], context: ToolContext) -> object:
    raise RuntimeError("it broke")


TOOLS = [Tool("lookup", "Look up.", handler=lookup), Tool("broken", "Fails.", handler=broken)]


async def test_a_call_is_one_server_span_with_its_connects_barge_in_tools_and_resume(
    autojump_clock: Any, spans: InMemorySpanExporter
) -> None:
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.3, tone(3.0, 300), "a long answer")],
            speech_started_at=[1.0],  # the caller talks over it: a barge-in
            caller_transcripts=[(1.5, "Where is my order?")],
            tool_calls=[FakeToolCall("lookup", {}, call_id="c1"), FakeToolCall("broken", {})],
            close_at=(2.5, 1011),  # a drop: resumed
            only_session=1,
        )
    )
    async with bridged(
        fake, Settings(), call_options={"tools": TOOLS}, audio=SILENCE, seconds=4.0
    ) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    [ended] = outcome.registry.recent
    assert (ended.barge_ins, ended.resumes, ended.tool_calls) == (1, 1, 2)
    finished = spans.get_finished_spans()

    [call] = named(finished, "voxbridge.call")
    assert call.kind is SpanKind.SERVER and call.parent is None
    assert call.status.status_code is StatusCode.UNSET
    assert attributes(call) == {
        "voxbridge.call_id": ended.call_id,
        "voxbridge.call_sid": caller.call_sid,
        "voxbridge.stream_sid": caller.stream_sid,
        "voxbridge.carrier": "twilio",
        "voxbridge.provider": "openai",
        "gen_ai.provider.name": "openai",
        "voxbridge.agent": "default",
        "voxbridge.reason": "caller_stop",
        "voxbridge.frames_in": ended.frames_from_caller,
        "voxbridge.frames_out": ended.frames_to_caller,
        "voxbridge.barge_ins": 1,
        "voxbridge.resumes": 1,
        "voxbridge.tool_calls": 2,
    }
    # one trace, every span inside the call's time
    assert {span.context.trace_id for span in finished if span.context} == {
        call.context.trace_id  # type: ignore[union-attr]
    }
    assert call.start_time is not None and call.end_time is not None
    for span in finished:
        assert span.start_time is not None and span.end_time is not None
        assert call.start_time <= span.start_time <= span.end_time <= call.end_time

    [resume] = named(finished, "voxbridge.provider.resume")
    assert parent_of(resume) == span_id(call)
    assert attributes(resume) == {
        "voxbridge.provider": "openai",
        "voxbridge.drop_reason": "upstream_closed",
    }
    assert resume.status.status_code is StatusCode.UNSET

    first, second = named(finished, "voxbridge.provider.connect")
    assert [parent_of(first), parent_of(second)] == [span_id(call), span_id(resume)]
    for connect in (first, second):
        assert connect.kind is SpanKind.CLIENT
        assert connect.status.status_code is StatusCode.UNSET
        assert attributes(connect) == {
            "voxbridge.provider": "openai",
            "gen_ai.provider.name": "openai",
            "voxbridge.attempt": 1,
        }

    [barge_in] = named(finished, "voxbridge.barge_in")
    assert parent_of(barge_in) == span_id(call)
    assert attributes(barge_in) == {"voxbridge.truncated_items": 1}

    [ok] = named(finished, "execute_tool lookup")
    [failed] = named(finished, "execute_tool broken")
    for span in (ok, failed):
        assert span.kind is SpanKind.INTERNAL and parent_of(span) == span_id(call)
    assert attributes(ok) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "lookup",
        "gen_ai.tool.call.id": "c1",
        "gen_ai.tool.type": "function",
        "gen_ai.provider.name": "openai",
        "voxbridge.tool.outcome": "ok",
    }
    assert ok.status.status_code is StatusCode.UNSET
    assert attributes(failed)["error.type"] == "error"
    assert attributes(failed)["voxbridge.tool.outcome"] == "error"
    assert failed.status.status_code is StatusCode.ERROR
    assert len(finished) == 7  # and nothing else: no span per frame


async def test_each_recycle_is_a_span_over_its_connect(
    autojump_clock: Any, spans: InMemorySpanExporter
) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05))
    settings = Settings(session_max_age=3.0, idle_timeout=100)
    async with bridged(fake, settings, seconds=8.0):
        pass
    finished = spans.get_finished_spans()
    [call] = named(finished, "voxbridge.call")
    recycles = named(finished, "voxbridge.provider.recycle")
    assert len(recycles) == 2 == len(fake.sessions) - 1  # at 3 s and 6 s
    connects = named(finished, "voxbridge.provider.connect")
    assert [parent_of(c) for c in connects] == [span_id(call)] + [span_id(r) for r in recycles]
    for recycle in recycles:
        assert parent_of(recycle) == span_id(call)
        assert attributes(recycle) == {"voxbridge.provider": "openai", "voxbridge.recycled": True}


async def test_refused_connect_attempts_and_an_internal_error_are_errors(
    autojump_clock: Any, spans: InMemorySpanExporter
) -> None:
    fake = await served(FakeOpenAIRealtime(refuse_status=403))
    async with bridged(fake, Settings(), seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.UPSTREAM_REJECTED
    [call] = named(spans.get_finished_spans(), "voxbridge.call")
    [connect] = named(spans.get_finished_spans(), "voxbridge.provider.connect")
    assert connect.status.status_code is StatusCode.ERROR
    assert attributes(connect)["error.type"] == "upstream_rejected"
    assert attributes(call)["voxbridge.reason"] == "upstream_rejected"
    assert call.status.status_code is StatusCode.UNSET  # the provider refused: no bug of ours
    spans.clear()

    fake = await served(FakeOpenAIRealtime(caller_transcripts=[(0.5, "hello")]))
    async with bridged(fake, Settings(), provider_type=BuggyProvider, seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.INTERNAL_ERROR
    [call] = named(spans.get_finished_spans(), "voxbridge.call")
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description == outcome.disconnect.detail
    assert attributes(call)["error.type"] == "internal_error"
    assert attributes(call)["voxbridge.reason"] == "internal_error"


async def test_a_span_current_in_a_task_is_the_parent_in_the_tasks_it_starts_later(
    spans: InMemorySpanExporter,
) -> None:
    """trio copies the context at spawn: a task started inside the span sees it, one started
    before it does not."""
    tracer = tracing.tracer()
    go = trio.Event()

    async def child(name: str) -> None:
        await go.wait()
        with tracer.span(name):
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child, "started before")
        with tracer.span("parent") as parent:
            assert tracing.current_span().recording and parent.recording
            nursery.start_soon(child, "started inside")
            go.set()
            await trio.sleep(0.01)  # (real time: the children finish inside the parent)
        assert not tracing.current_span().recording
    finished = spans.get_finished_spans()
    [parent_span] = named(finished, "parent")
    [inside] = named(finished, "started inside")
    [before] = named(finished, "started before")
    assert parent_of(inside) == span_id(parent_span)
    assert before.parent is None


def test_the_attribute_names_are_the_semantic_conventions() -> None:
    """The names voxbridge writes, against the installed opentelemetry-semantic-conventions."""
    gen_ai = pytest.importorskip("opentelemetry.semconv._incubating.attributes.gen_ai_attributes")
    error = pytest.importorskip("opentelemetry.semconv.attributes.error_attributes")
    assert gen_ai.GEN_AI_OPERATION_NAME == "gen_ai.operation.name"
    assert gen_ai.GEN_AI_TOOL_NAME == "gen_ai.tool.name"
    assert gen_ai.GEN_AI_TOOL_CALL_ID == "gen_ai.tool.call.id"
    assert gen_ai.GEN_AI_TOOL_TYPE == "gen_ai.tool.type"
    assert gen_ai.GEN_AI_PROVIDER_NAME == "gen_ai.provider.name"
    assert error.ERROR_TYPE == "error.type"


# --- off, on from the environment, and without the package ----------------------------------------

# A call with a barge-in and a tool call, in memory on the autojump clock: every traced path runs.
OFF_SCRIPT = """
import sys

import trio
import trio.testing

import voxbridge
import voxbridge.cli
import voxbridge.server
from voxbridge import tracing
from voxbridge.audio import tone
from voxbridge.session import CallRegistry, run_call
from voxbridge.settings import Settings
from voxbridge.testing import CarrierSimulator
from voxbridge.testing.fake_openai import FakeOpenAIRealtime, FakeToolCall
from voxbridge.testing.memory import accept_carrier, memory_connector
from voxbridge.tools import Tool


async def lookup(arguments, context):
    return {"ok": True}


async def main():
    fake = FakeOpenAIRealtime(
        speak=[(0.3, tone(2.0, 300), "hi")],
        speech_started_at=[1.0],
        caller_transcripts=[(1.5, "go")],
        tool_calls=[FakeToolCall("lookup", {})],
    )
    fake.url = "ws://fake.invalid/v1/realtime"
    registry = CallRegistry()
    async with trio.open_nursery() as nursery:
        caller, bridge = trio.testing.memory_stream_pair()
        nursery.start_soon(CarrierSimulator(caller, audio=b"\\xff" * 8000, seconds=3.0).run)
        carrier = await accept_carrier(nursery, bridge)
        ended = await run_call(
            carrier,
            fake.endpoint(),
            settings=Settings(),
            registry=registry,
            tools=[Tool("lookup", "Look up.", handler=lookup)],
            connect_stream=memory_connector(nursery, fake),
        )
        nursery.cancel_scope.cancel()
    assert ended.reason.value == "caller_stop", ended
    [record] = registry.recent
    assert (record.barge_ins, record.tool_calls) == (1, 1), record


assert tracing.configure_from_env() is False
trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
print(sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry"))
"""


def otel_free_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.mark.hang_limit(60)
def test_with_tracing_off_no_opentelemetry_module_is_imported(tmp_path: Path) -> None:
    script = tmp_path / "off.py"
    script.write_text(OFF_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        env=otel_free_env(),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


ON_SCRIPT = """
import trio

from voxbridge import tracing


async def main():
    tracer = tracing.tracer()
    with tracer.span("voxbridge.call", kind="server", attributes={"voxbridge.call_id": "c1"}):
        with tracer.span("voxbridge.provider.connect", kind="client"):
            await trio.lowlevel.checkpoint()


assert tracing.configure_from_env() is True
assert tracing.enabled()
trio.run(main)
tracing.shutdown()  # exports what is queued
assert not tracing.enabled()
"""


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver on loopback: keeps each export request's protobuf body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str, bytes]] = []
        super().__init__(("127.0.0.1", 0), Receive)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Receive(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def exported(collector: Collector) -> tuple[dict[str, Any], list[Any]]:
    """The resource attributes and the spans of the one export request received."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    [(path, content_type, body)] = collector.bodies
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    request = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "voxbridge"
    return resource, list(scope_spans.spans)


@pytest.mark.hang_limit(60)
@pytest.mark.parametrize(
    ("env", "service"),
    [({}, "voxbridge"), ({"OTEL_SERVICE_NAME": "voice-eu"}, "voice-eu")],
    ids=["default-name", "OTEL_SERVICE_NAME"],
)
def test_the_endpoint_variable_turns_on_otlp_http_export(
    collector: Collector, tmp_path: Path, env: dict[str, str], service: str
) -> None:
    script = tmp_path / "on.py"
    script.write_text(ON_SCRIPT, encoding="utf-8")
    variables = otel_free_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
        **env,
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        env=variables,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resource, exported_spans = exported(collector)
    assert resource["service.name"] == service
    assert resource["deployment.environment.name"] == "test"
    call, connect = sorted(exported_spans, key=lambda span: span.name)
    assert (call.name, connect.name) == ("voxbridge.call", "voxbridge.provider.connect")
    assert connect.parent_span_id == call.span_id and connect.trace_id == call.trace_id
    assert call.kind == 2 and connect.kind == 3  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT


def test_the_endpoint_without_the_package_warns_once_and_traces_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    warned: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warned.append(f"{record.levelname}: {record.getMessage()}")

    logger = logging.getLogger("voxbridge.tracing")
    handler = Keep()
    logger.addHandler(handler)
    try:
        assert tracing.configure_from_env() is False
    finally:
        logger.removeHandler(handler)
    assert not tracing.enabled()
    assert warned == [
        "WARNING: OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed (no "
        "module 'opentelemetry.exporter.otlp.proto.http.trace_exporter'): no traces; install "
        "voxbridge[otel]"
    ]


def test_otel_sdk_disabled_wins_over_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_from_env() is False
    assert not tracing.enabled()


def test_the_off_tracer_allocates_nothing_per_span() -> None:
    off = tracing.Tracer()
    first = off.span("voxbridge.barge_in", attributes={"voxbridge.truncated_items": 1})
    assert first is off.span("anything")
    with first as span:
        assert span is tracing.NO_SPAN and not span.recording
        span.set("k", 1)
        span.fail("x", "y")
