"""The echo agent's test double: an OpenAI-Realtime provider that plays the caller back, with fault knobs.

The product's echo agent (what ``voxbridge serve --provider echo`` runs) is
:class:`voxbridge.echo_agent.EchoAgent`. :class:`FakeEchoAgent` is
:class:`~voxbridge.testing.fake_openai.FakeOpenAIRealtime` configured for echo, for tests:
a real WebSocket server (trio-websocket, real TCP on loopback, or any ``trio.abc.Stream`` via
:meth:`FakeEchoAgent.handle_stream` for in-memory tests) speaking the GA Realtime protocol:

* sends ``session.created`` on connect and answers ``session.update`` with ``session.updated``;
* for each ``input_audio_buffer.append`` schedules the same audio, ``delay`` seconds later, as a
  ``response.output_audio.delta`` (so a bridge's round trip is measurable);
* answers the other client events as the service does (item creates, truncates, ...);
* answers WebSocket pings (trio-websocket does this in its reader task).

Each connection is recorded as an :class:`AgentSession` -- when it opened and closed, with which
close code, what it received -- so tests and the demo can check, *from the provider's side*, that
the bridge closed its upstream socket. Fault knobs (``hangup_after``, and per session the
:class:`~voxbridge.testing.FaultStream` behind it) make it misbehave on purpose; the fake's own
knobs (``speak``, ``session_expired_at``, ...) are there too, as keyword arguments.

Every wait here is bounded too: a fake that hangs would hide the bugs it exists to find.
"""

from __future__ import annotations

from typing import Any

from ..providers.endpoint import ProviderEndpoint
from .fake_openai import AgentSession, FakeOpenAIRealtime, ResponseRecord

__all__ = ["AgentSession", "FakeEchoAgent", "ResponseRecord"]

HANGUP_REASON = "echo agent hangs up (fault knob)"


class FakeEchoAgent(FakeOpenAIRealtime):
    """A local OpenAI-Realtime-compatible agent that echoes audio after ``delay`` seconds.

    Args:
        delay: seconds between receiving a caller chunk and playing it back.
        hangup_after: fault knob -- close each session with ``hangup_code`` this many seconds
            after it opened.
        hangup_code: the close code for ``hangup_after``.
        queue: chunks waiting to be played back per session; beyond that audio is dropped
            (and counted in ``AgentSession.dropped``), never queued without bound.
        **knobs: any other :class:`FakeOpenAIRealtime` keyword argument.
    """

    endpoint_name = "echo"

    def __init__(
        self,
        *,
        delay: float = 0.2,
        hangup_after: float | None = None,
        hangup_code: int = 1011,
        queue: int = 512,
        **knobs: Any,
    ) -> None:
        knobs.setdefault("close_reason", HANGUP_REASON)
        super().__init__(echo_delay=delay, queue=queue, **knobs)
        self._hangup_after = hangup_after
        self._hangup_code = hangup_code
        self._sync_close()

    def _sync_close(self) -> None:
        if self._hangup_after is not None:
            self.close_at = (self._hangup_after, self._hangup_code)

    @property
    def delay(self) -> float:
        assert self.echo_delay is not None
        return self.echo_delay

    @delay.setter
    def delay(self, value: float) -> None:
        self.echo_delay = value

    @property
    def hangup_after(self) -> float | None:
        return self._hangup_after

    @hangup_after.setter
    def hangup_after(self, value: float | None) -> None:
        self._hangup_after = value
        if value is None:
            self.close_at = None
        self._sync_close()

    @property
    def hangup_code(self) -> int:
        return self._hangup_code

    @hangup_code.setter
    def hangup_code(self, value: int) -> None:
        self._hangup_code = value
        self._sync_close()

    def endpoint(self) -> ProviderEndpoint:
        """The endpoint a bridge uses to reach this agent (after :meth:`serve` started)."""
        if self.url is None:
            raise RuntimeError("FakeEchoAgent.serve() has not started")
        return ProviderEndpoint("echo", self.url)
