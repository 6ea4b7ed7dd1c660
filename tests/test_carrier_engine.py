"""The simulator's engine is carrier-neutral: it does what ``wire.capabilities`` says.

tests/test_carrier_simulator.py checks the engine with Twilio's wire (the default). Here the same
bridge-side scripts (Twilio's outbound frames, on a memory stream pair, on the autojump clock) play
to wires that behave like the other carriers: one that never echoes a mark a clear discarded and
has no stop event (Plivo's behaviour), one without marks at all (Vonage's). The wires differ from
Twilio's in their capabilities and their stop only, so what changes in the results is the engine's
doing.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_carrier_simulator import A, B, Bridge, C, D, call, clear, mark, media

from voxbridge.carriers.base import Capabilities
from voxbridge.testing.carrier import TwilioWire
from voxbridge.testing.carrier_wire import SimulatedCall


class CheckpointWire(TwilioWire):
    """Plivo's behaviour on Twilio's frames: cleared checkpoints are never echoed, no stop."""

    capabilities = Capabilities(echoes_cleared_marks=False, sends_stop=False)

    def stop(self, call: SimulatedCall) -> str | None:
        return None


class MarklessWire(CheckpointWire):
    """Vonage's behaviour on Twilio's frames: no marks at all, no stop."""

    capabilities = Capabilities(marks=False, echoes_cleared_marks=False, sends_stop=False)


SCRIPT = [
    *((0.0, media(A[i : i + 160])) for i in range(0, len(A), 160)),  # plays 0.0 .. 1.0
    (0.0, mark("a")),
    (0.0, media(B)),  # plays from 1.0: cut by the clear at 1.5
    (0.0, mark("b")),
    (0.0, media(D)),  # queued behind B: discarded unheard
    (0.0, mark("d")),
    (1.5, clear()),
    (1.5, media(C[:2000])),  # 0.25 s from 1.5
    (1.5, mark("c")),  # due at 1.75
]


async def test_cleared_checkpoints_are_dropped_and_the_caller_hangs_up_by_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = Bridge(SCRIPT, close_at=None)
    result = await call(bridge, seconds=2.0, wire=CheckpointWire())
    t0 = bridge.t0
    assert bytes(result.played) == A + B[:4000] + C[:2000]  # playback is the same as Twilio's
    assert result.heard_ms_at_clear == [1500.0]
    # "a" once A played and "c" once C played; "b" and "d" never: the clear discarded them
    assert bridge.marks() == [(pytest.approx(1.0), "a"), (pytest.approx(1.75), "c")]
    assert (result.marks_received, result.marks_echoed, result.marks_discarded) == (4, 2, 2)
    # no stop: after the last frame (1.98 s), the simulator closed the WebSocket itself
    sent = [e["event"] for _, e in bridge.received if e["event"] != "mark"]
    assert sent == ["connected", "start", *["media"] * 100]
    assert result.closed_at is not None and result.closed_at - t0 == pytest.approx(1.98)
    assert result.close_code is None  # the bridge did not close it
    assert result.protocol_errors == []


async def test_a_carrier_without_marks_echoes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = Bridge(SCRIPT, close_at=None)
    result = await call(bridge, seconds=2.0, wire=MarklessWire())
    assert bytes(result.played) == A + B[:4000] + C[:2000]
    assert bridge.marks() == []
    assert (result.marks_received, result.marks_echoed, result.marks_discarded) == (4, 0, 0)


async def test_frames_the_carrier_refuses_are_recorded_and_the_call_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = Bridge(
        [
            (0.0, '{"event":"playAudio"}'),
            (0.0, "not json"),
            (0.0, '{"event":"media","media":{}}'),
            (0.0, media(A[:800])),
        ],
        close_at=0.5,
    )
    result = await call(bridge, seconds=1.0)
    assert result.protocol_errors == [
        "unknown event 'playAudio' (Twilio error 31924)",
        "Expecting value: line 1 column 1 (char 0)",
        "bad media frame: KeyError",
    ]
    assert bytes(result.played) == A[:800]
    assert result.frames_received == 1
    assert result.close_code == 1000


def test_twilio_refuses_binary_frames() -> None:
    with pytest.raises(ValueError, match="31950"):
        TwilioWire().parse(b"\x00\x01")
