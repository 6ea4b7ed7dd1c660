"""The carrier simulator's playout knobs: ``playout_latency`` (an idle carrier starts playing that
long after audio reaches it) and ``jitter`` (each agent audio message, and each mark echo, up to
that much late, in order, from seeded draws).

The bridge's end is the hand-written one of test_carrier_simulator.py (Twilio's outbound frames on
a memory stream), on the autojump clock: times are checked to the virtual microsecond, and what was
heard to the byte.
"""

from __future__ import annotations

import random

import pytest
import trio.testing
from test_carrier_simulator import A, B, Bridge, C, call, clear, mark, media


async def test_an_idle_carrier_starts_playing_after_its_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = Bridge(
        [
            (0.0, media(A[:800])),  # 100 ms: plays 0.08 .. 0.18
            (0.0, mark("a")),
            (0.5, media(B[:1600])),  # 200 ms after a silence: plays 0.58 .. 0.78, cut at 0.68
            (0.5, mark("b")),
            (0.68, clear()),
            (0.7, media(C[:800])),  # the queue was cleared: plays 0.78 .. 0.88
            (0.7, mark("c")),
        ],
        close_at=1.0,
    )
    result = await call(bridge, seconds=2.0, playout_latency=0.08)
    t0 = bridge.t0
    approx = pytest.approx
    assert bridge.marks() == [(approx(0.18), "a"), (approx(0.68), "b"), (approx(0.88), "c")]
    assert bytes(result.played) == A[:800] + B[:800] + C[:800]
    assert [(start - t0, nbytes) for start, nbytes in result.playout] == [
        (approx(0.08), 800),
        (approx(0.58), 800),
        (approx(0.78), 800),
    ]
    assert result.heard_ms_at_clear == [approx(100.0)]  # of the stretch playing then
    assert result.played_ms_at_clear == [200.0]  # in the whole call
    assert result.heard_ms_at(t0 + 0.08) == 0.0
    assert result.heard_ms_at(t0 + 0.13) == approx(50.0)
    assert result.heard_ms_at(t0 + 0.63) == approx(150.0)
    assert result.heard_ms_at(t0 + 0.9) == approx(300.0)


async def test_jitter_delays_audio_and_echoes_in_order_from_the_seed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    jitter, seed = 0.05, 3
    bridge = Bridge(
        [
            (0.0, media(A[:160])),
            (0.0, media(A[160:320])),
            (0.0, mark("m")),  # arrives with the audio before it, echoed once that has played
            (0.2, media(B[:160])),
            (0.2, clear()),  # never overtakes the audio sent before it
        ],
        close_at=0.5,
    )
    result = await call(bridge, seconds=1.0, jitter=jitter, seed=seed)
    t0 = bridge.t0
    audio, echoes = random.Random(seed), random.Random(f"{seed}/echoes")
    first = t0 + audio.uniform(0, jitter)
    second = max(first, t0 + audio.uniform(0, jitter))
    ends = max(second, first + 0.02) + 0.02  # queued behind the first, or after a silence
    echoed = ends + echoes.uniform(0, jitter)
    cleared = t0 + 0.2 + audio.uniform(0, jitter)  # with B, which it follows
    assert [(start, nbytes) for start, nbytes in result.playout] == [
        (pytest.approx(first), 160),
        (pytest.approx(ends - 0.02), 160),
    ]
    assert bridge.marks() == [(pytest.approx(echoed - t0), "m")]
    assert result.clears_at == [pytest.approx(cleared)]
    assert bytes(result.played) == A[:320]  # B arrived with the clear: never heard
    assert result.played_ms_at_clear == [40.0]
    assert result.first_received_at == pytest.approx(first)


async def test_without_the_knobs_audio_plays_the_instant_it_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = Bridge([(0.1, media(A[:800])), (0.1, mark("a"))], close_at=0.5)
    result = await call(bridge, seconds=1.0)
    assert bridge.marks() == [(pytest.approx(0.2), "a")]
    assert [(start - bridge.t0, nbytes) for start, nbytes in result.playout] == [
        (pytest.approx(0.1), 800)
    ]
