"""A local Gemini Live (``BidiGenerateContent``) on a real WebSocket, for tests and demos.

trio-websocket on a :class:`~voxbridge.testing.FaultStream`-wrapped TCP stream, like the other
fakes. The handshake must name the ``BidiGenerateContent`` resource (404 otherwise); a wrong or
missing ``?key=`` is accepted and then closed with 1007 ``API key not valid`` (what the service
does); ``refuse_status`` rejects every handshake with that HTTP status instead.

The first message must be ``setup`` (else close 1007); the fake answers ``setupComplete``,
``setup_delay`` later (setting a session up takes the service a moment). Nothing may come before
it: a client must wait for ``setupComplete`` (as ``google-genai``'s does), and every message that
arrives earlier -- audio, text, turns -- is ignored and recorded as a protocol violation
(``GeminiSession.before_setup_complete``, and in ``errors``). A ``sessionResumption.handle`` must
be one this fake issued (else close 1008); the session then continues that conversation.
``historyConfig.initialHistoryInClientContent`` makes the fake expect ``clientContent`` turns
(recorded) before realtime input.

What the fake does, each time relative to the session's opening (and never before
``setupComplete``):

* **echo** (``echo=True``): every ``realtimeInput.audio`` (PCM16LE 16 kHz) is played back
  ``delay`` seconds later as ``serverContent.modelTurn`` ``inlineData`` at 24 kHz.
* **speech**: scripted :class:`Speech` -- 24 kHz PCM in ``chunk_ms`` parts, then its
  ``outputTranscription``, ``turnComplete`` with ``usageMetadata``, and a
  ``sessionResumptionUpdate`` with a new handle.
* **heard**: ``(at, text)`` caller transcription chunks (``inputTranscription``).
* **interrupt_at**: times at which ``serverContent.interrupted`` is sent (speech in progress
  stops).
* **tool_calls**: :class:`FakeToolCall` as ``toolCall.functionCalls``; each ``toolResponse`` is
  answered with speech and recorded; ``realtimeInput.text`` (a greeting request, key presses) is
  answered with speech too.
* **go_away_at**: ``(at, time_left_seconds)`` sends ``goAway``; the connection is then closed
  with 1000 when the time is up (what the service does).
* ``resumable=False``: every resumption update says the session cannot be resumed (no handle).
* Faults: ``close_at=(at, code)`` drops the session (with ``close_reason``); ``freeze_at`` stops
  reading and writing (no pongs, nothing sent); ``only_sessions`` limits the scripted actions to
  the first N sessions.
* The fault knobs under :class:`~voxbridge.testing.FakeOpenAIRealtime`'s names:
  ``refuse_status``, ``handshake_delay`` (wait before accepting), ``close_at``/``close_reason``,
  ``stop_reading_at`` (stop reading only: no pongs), ``speech_started_at`` (``interrupted``, as
  ``interrupt_at``) and ``only_session=k`` (the scripted and fault knobs, ``refuse_status`` and
  ``handshake_delay`` too, apply to the k-th connection only, counting refused ones). Gemini has
  no hang-up: nothing ends a call from the service's side but the connection's time limit.

Every session is a :class:`GeminiSession` record. Every wait here is bounded.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import numpy as np
import soxr  # type: ignore[import-untyped]  # no stubs, no py.typed
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import LocalProtocolError

from ..providers.endpoint import ProviderEndpoint
from ..providers.gemini import gemini_endpoint
from .faults import FaultStream, record_close

__all__ = ["FakeGemini", "FakeToolCall", "GeminiSession", "Speech", "pcm24"]

HANDSHAKE_TIMEOUT = 10.0
WAIT_TIMEOUT = 10.0
SEND_TIMEOUT = 5.0
RESOURCE = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
OUTPUT_MIME = "audio/pcm;rate=24000"
PCM24_BYTES_PER_MS = 48
SPEECH_MS = 100


def pcm24(ms: int = SPEECH_MS, frequency: float = 440.0) -> bytes:
    """A tone as PCM16LE at 24 kHz (what the fake speaks)."""
    n = np.arange(ms * 24)
    samples = np.sin(2 * np.pi * frequency * n / 24000) * 8000
    return bytes(samples.astype("<i2").tobytes())


@attrs.frozen
class Speech:
    """Agent speech at ``at`` seconds: ``audio`` (PCM16LE 24 kHz) and its ``text``."""

    at: float
    text: str
    audio: bytes = attrs.field(factory=pcm24, repr=False)


@attrs.frozen
class FakeToolCall:
    """A ``functionCalls`` entry sent at ``at`` seconds."""

    at: float
    name: str
    args: dict[str, Any] = attrs.Factory(dict)


@attrs.define(eq=False)
class GeminiSession:
    """One WebSocket as the fake saw it (times are ``trio.current_time()``)."""

    stream: FaultStream
    opened_at: float
    index: int = 0
    number: int = 0  # the connection's number (1-based, refused ones counted): ``only_session``
    query: dict[str, str] = attrs.Factory(dict)
    setup: dict[str, Any] | None = None
    #: When ``setupComplete`` was sent (``None``: not yet).
    setup_complete_at: float | None = None
    #: The kind of every message received before ``setupComplete`` (ignored): a client that did
    #: not wait for it.
    before_setup_complete: list[str] = attrs.Factory(list)
    resumed_from: str | None = None
    client_content: list[dict[str, Any]] = attrs.Factory(list)
    texts: list[str] = attrs.Factory(list)
    tool_responses: list[dict[str, Any]] = attrs.Factory(list)
    audio_in: int = 0
    audio_bytes_in: int = 0
    audio_out: int = 0
    audio_bytes_out: int = 0
    sent: list[dict[str, Any]] = attrs.field(factory=list, repr=False)
    errors: list[str] = attrs.Factory(list)
    handles: list[str] = attrs.Factory(list)
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed: trio.Event = attrs.Factory(trio.Event)
    _set_up: trio.Event = attrs.Factory(trio.Event)  # setupComplete was sent
    _speaking: trio.Lock = attrs.Factory(trio.Lock)
    _cut: int = 0  # bumped by interrupted: speech in progress stops

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    async def wait_closed(self) -> None:
        with trio.fail_after(WAIT_TIMEOUT):
            await self.closed.wait()


class FakeGemini:
    """A local Gemini Live for tests. ``await nursery.start(fake.serve)`` returns its URL."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        echo: bool = False,
        delay: float = 0.0,
        speech: Sequence[Speech] = (),
        heard: Sequence[tuple[float, str]] = (),
        interrupt_at: Sequence[float] = (),
        tool_calls: Sequence[FakeToolCall] = (),
        usage: dict[str, Any] | None = None,
        go_away_at: tuple[float, float] | None = None,
        close_at: tuple[float, int] | None = None,
        close_reason: str = "fake provider closes (fault knob)",
        freeze_at: float | None = None,
        stop_reading_at: float | None = None,
        speech_started_at: Sequence[float] = (),
        refuse_status: int | None = None,
        handshake_delay: float = 0.0,
        only_sessions: int | None = None,
        only_session: int | None = None,
        chunk_ms: int = 20,
        resumable: bool = True,
        setup_delay: float = 0.05,
    ) -> None:
        self.api_key = api_key
        self.echo = echo
        self.delay = delay
        self.speech = tuple(speech)
        self.heard = tuple(heard)
        self.interrupt_at = tuple(interrupt_at)
        self.tool_calls = tuple(tool_calls)
        self.usage = usage or {
            "promptTokenCount": 30,
            "responseTokenCount": 20,
            "totalTokenCount": 50,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 10},
                {"modality": "AUDIO", "tokenCount": 20},
            ],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 20}],
        }
        self.go_away_at = go_away_at
        self.close_at = close_at
        self.close_reason = close_reason
        self.freeze_at = freeze_at
        self.stop_reading_at = stop_reading_at
        self.speech_started_at = tuple(speech_started_at)
        self.refuse_status = refuse_status
        self.handshake_delay = handshake_delay
        self.only_sessions = only_sessions
        self.only_session = only_session
        self.connections = 0
        self.chunk_ms = chunk_ms
        self.resumable = resumable
        self.setup_delay = setup_delay
        self.url = ""
        self.sessions: list[GeminiSession] = []
        self.issued: set[str] = set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"FakeGemini(url={self.url!r}, sessions={len(self.sessions)})"

    def endpoint(self, api_key: str | None = None) -> ProviderEndpoint:
        """The endpoint of this fake, with ``api_key`` (default: the right one)."""
        return gemini_endpoint(self.url, self.api_key if api_key is None else api_key)

    async def serve(
        self,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a free port until cancelled; ``task_status`` gets the ws:// URL."""
        listeners = await trio.open_tcp_listeners(0, host=host)
        try:
            bound = listeners[0].socket.getsockname()
            self.url = f"ws://{bound[0]}:{bound[1]}{RESOURCE}"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self.handle_stream, listeners)
                task_status.started(self.url)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def wait_for_session(self, count: int = 1) -> GeminiSession:
        """Wait (at most ``WAIT_TIMEOUT``) until ``count`` sessions opened; return the last."""
        with trio.fail_after(WAIT_TIMEOUT):
            while len(self.sessions) < count:
                await self._changed.wait()
        return self.sessions[count - 1]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def scripted(self, number: int) -> bool:
        """Whether the scripted and fault knobs apply to connection ``number``
        (``only_session``; ``only_sessions`` further limits the scripted actions)."""
        return self.only_session is None or self.only_session == number

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one WebSocket connection on an open byte stream."""
        self.connections += 1
        fault = FaultStream(stream)
        session = GeminiSession(stream=fault, opened_at=trio.current_time())
        session.number = self.connections
        scripted = self.scripted(session.number)
        delay = self.handshake_delay if scripted else 0.0
        ws: WebSocketConnection | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(HANDSHAKE_TIMEOUT + delay):
                    request = await wrap_server_stream(nursery, fault)
                    parts = urlsplit(request.path)
                    session.query = dict(parse_qsl(parts.query))
                    if scripted and self.refuse_status is not None:
                        await request.reject(self.refuse_status, body=b"refused by the fake")
                    elif parts.path != RESOURCE:
                        await request.reject(404, body=b"not found")
                    else:
                        await trio.sleep(delay)
                        ws = await request.accept()
                if ws is not None:
                    session.opened_at = trio.current_time()
                    self.sessions.append(session)
                    session.index = len(self.sessions)
                    self._notify()
                    await self._converse(session, ws)
                nursery.cancel_scope.cancel()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except* LocalProtocolError:
            pass
        finally:
            if session.closed_at is None:
                session.closed_at = trio.current_time()
            session.closed.set()
            self._notify()
            await trio.aclose_forcefully(fault)

    async def _converse(self, session: GeminiSession, ws: WebSocketConnection) -> None:
        if session.query.get("key") != self.api_key:
            await self._close(session, ws, 1007, "API key not valid. Please pass a valid API key.")
            return
        try:
            with trio.fail_after(WAIT_TIMEOUT):
                first = json.loads(await ws.get_message())
        except (trio.TooSlowError, ValueError):
            first = None
        setup = first.get("setup") if isinstance(first, dict) else None
        if not isinstance(setup, dict) or not str(setup.get("model", "")).startswith("models/"):
            session.errors.append(f"first message is not a setup: {first!r}"[:200])
            await self._close(session, ws, 1007, "Request contains an invalid argument.")
            return
        session.setup = setup
        handle = (setup.get("sessionResumption") or {}).get("handle")
        if handle is not None:
            if handle not in self.issued:
                await self._close(session, ws, 1008, "invalid session resumption handle")
                return
            session.resumed_from = handle
        scripted = self.scripted(session.number) and (
            self.only_sessions is None or session.index <= self.only_sessions
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._complete_setup, session, ws)  # read on meanwhile
            playback_in, playback_out = trio.open_memory_channel[tuple[float, bytes]](256)
            nursery.start_soon(self._play, session, ws, playback_out)
            if scripted:
                for speech in self.speech:
                    nursery.start_soon(self._at, session, speech.at, self._speak, ws, speech)
                for at, text in self.heard:
                    heard = {"serverContent": {"inputTranscription": {"text": text}}}
                    nursery.start_soon(self._at, session, at, self._send, ws, heard)
                for at in (*self.interrupt_at, *self.speech_started_at):
                    nursery.start_soon(self._at, session, at, self._interrupt, ws)
                for number, call in enumerate(self.tool_calls, start=1):
                    nursery.start_soon(self._at, session, call.at, self._call, ws, call, number)
                if self.go_away_at is not None:
                    nursery.start_soon(self._at, session, self.go_away_at[0], self._go_away, ws)
                if self.close_at is not None:
                    nursery.start_soon(self._at, session, self.close_at[0], self._drop, ws)
                if self.freeze_at is not None:
                    nursery.start_soon(self._at, session, self.freeze_at, self._freeze, ws)
                if self.stop_reading_at is not None:
                    stop_reading = self.stop_reading_at
                    nursery.start_soon(self._at, session, stop_reading, self._stop_reading, ws)
            up = soxr.ResampleStream(16000, 24000, 1, dtype="int16", vr=True)
            try:
                while True:
                    message = json.loads(await ws.get_message())
                    await self._on_message(session, ws, message, up, playback_in, nursery)
            except ConnectionClosed as exc:
                record_close(session, exc)
            except ValueError:
                session.errors.append("a message that is not JSON")
                await self._close(session, ws, 1007, "Invalid JSON payload received.")
            finally:
                nursery.cancel_scope.cancel()

    async def _on_message(
        self,
        session: GeminiSession,
        ws: WebSocketConnection,
        message: Any,
        up: Any,
        playback: trio.MemorySendChannel[tuple[float, bytes]],
        nursery: trio.Nursery,
    ) -> None:
        if not isinstance(message, dict) or len(message) != 1:
            session.errors.append(f"not one client message: {message!r}"[:200])
            return
        ((kind, body),) = message.items()
        if session.setup_complete_at is None:
            session.before_setup_complete.append(kind)
            session.errors.append(f"{kind} before setupComplete")
            return
        if kind == "realtimeInput" and isinstance(body, dict):
            audio = body.get("audio")
            if isinstance(audio, dict):
                if audio.get("mimeType") != "audio/pcm;rate=16000":
                    session.errors.append(f"audio mimeType {audio.get('mimeType')!r}")
                    return
                pcm = base64.b64decode(audio.get("data", ""), validate=True)
                session.audio_in += 1
                session.audio_bytes_in += len(pcm)
                if self.echo and pcm:
                    out = up.resample_chunk(np.frombuffer(pcm, dtype="<i2"))
                    echoed = out.astype("<i2").tobytes()
                    try:
                        playback.send_nowait((trio.current_time() + self.delay, echoed))
                    except trio.WouldBlock:
                        pass
            elif isinstance(body.get("text"), str):
                session.texts.append(body["text"])
                speech = Speech(0, f"you said {len(session.texts)}", pcm24())
                nursery.start_soon(self._speak, session, ws, speech)
            else:
                session.errors.append(f"realtimeInput without audio or text: {body!r}"[:200])
        elif kind == "toolResponse" and isinstance(body, dict):
            for response in body.get("functionResponses", []):
                session.tool_responses.append(response)
                speech = Speech(0, f"the tool said {json.dumps(response.get('response'))}")
                nursery.start_soon(self._speak, session, ws, speech)
        elif kind == "clientContent" and isinstance(body, dict):
            session.client_content.append(body)
        else:
            session.errors.append(f"unexpected client message {kind!r}")

    async def _complete_setup(self, session: GeminiSession, ws: WebSocketConnection) -> None:
        await trio.sleep(self.setup_delay)
        session.setup_complete_at = trio.current_time()
        await self._send(session, ws, {"setupComplete": {}})
        session._set_up.set()

    async def _at(self, session: GeminiSession, at: float, action: Any, *args: Any) -> None:
        await trio.sleep_until(session.opened_at + at)
        await session._set_up.wait()  # the service says nothing before setupComplete
        await action(session, *args)

    async def _play(
        self,
        session: GeminiSession,
        ws: WebSocketConnection,
        playback: trio.MemoryReceiveChannel[tuple[float, bytes]],
    ) -> None:
        async for due, pcm in playback:
            await trio.sleep_until(due)
            await self._audio(session, ws, pcm)

    async def _audio(self, session: GeminiSession, ws: WebSocketConnection, pcm: bytes) -> bool:
        data = base64.b64encode(pcm).decode()
        part = {"inlineData": {"mimeType": OUTPUT_MIME, "data": data}}
        sent = await self._send(session, ws, {"serverContent": {"modelTurn": {"parts": [part]}}})
        if sent:
            session.audio_out += 1
            session.audio_bytes_out += len(pcm)
        return sent

    async def _speak(self, session: GeminiSession, ws: WebSocketConnection, speech: Speech) -> None:
        """One agent turn: audio in ``chunk_ms`` parts (real time), transcription, turn end."""
        async with session._speaking:
            cut = session._cut
            step = self.chunk_ms * PCM24_BYTES_PER_MS
            begin = trio.current_time()
            for index, start in enumerate(range(0, len(speech.audio), step)):
                await trio.sleep_until(begin + index * self.chunk_ms / 1000)
                if session._cut != cut:
                    return  # interrupted: the turn is over
                if not await self._audio(session, ws, speech.audio[start : start + step]):
                    return
            await trio.sleep_until(
                begin + math.ceil(len(speech.audio) / step) * self.chunk_ms / 1000
            )
            if session._cut != cut:
                return
            said = {"serverContent": {"outputTranscription": {"text": speech.text}}}
            await self._send(session, ws, said)
            await self._send(session, ws, {"serverContent": {"generationComplete": True}})
            done = {"serverContent": {"turnComplete": True}, "usageMetadata": self.usage}
            await self._send(session, ws, done)
            update: dict[str, Any] = {"resumable": False}
            if self.resumable:
                handle = f"handle-{session.index}-{len(session.handles) + 1}"
                session.handles.append(handle)
                self.issued.add(handle)
                update = {"newHandle": handle, "resumable": True}
            await self._send(session, ws, {"sessionResumptionUpdate": update})

    async def _interrupt(self, session: GeminiSession, ws: WebSocketConnection) -> None:
        session._cut += 1
        await self._send(session, ws, {"serverContent": {"interrupted": True}})

    async def _call(
        self, session: GeminiSession, ws: WebSocketConnection, call: FakeToolCall, number: int
    ) -> None:
        calls = [{"id": f"fc-{session.index}-{number}", "name": call.name, "args": call.args}]
        await self._send(session, ws, {"toolCall": {"functionCalls": calls}})

    async def _go_away(self, session: GeminiSession, ws: WebSocketConnection) -> None:
        assert self.go_away_at is not None
        left = self.go_away_at[1]
        await self._send(session, ws, {"goAway": {"timeLeft": f"{left:g}s"}})
        await trio.sleep(left)
        await self._close(session, ws, 1000, "session time limit reached")

    async def _drop(self, session: GeminiSession, ws: WebSocketConnection) -> None:
        assert self.close_at is not None
        await self._close(session, ws, self.close_at[1], self.close_reason)

    async def _freeze(self, session: GeminiSession, ws: WebSocketConnection) -> None:
        session.stream.stop_reading()
        session.stream.stop_writing()

    async def _stop_reading(self, session: GeminiSession, ws: WebSocketConnection) -> None:
        session.stream.stop_reading()

    async def _close(
        self, session: GeminiSession, ws: WebSocketConnection, code: int, reason: str
    ) -> None:
        if session.close_code is None:
            session.close_code, session.close_reason = code, reason
        with trio.move_on_after(SEND_TIMEOUT):
            await ws.aclose(code, reason)

    async def _send(
        self, session: GeminiSession, ws: WebSocketConnection, message: dict[str, Any]
    ) -> bool:
        with trio.move_on_after(SEND_TIMEOUT):
            try:
                await ws.send_message(json.dumps(message, separators=(",", ":")))
            except ConnectionClosed:
                return False
            session.sent.append(message)
            return True
        return False
