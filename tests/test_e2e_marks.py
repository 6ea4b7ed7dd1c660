"""Sparse marks end to end: ``voxbridge serve --marks sparse`` on loopback, the Twilio carrier
simulator with playout latency, the OpenAI fake. One answer in 100 ms messages, the caller talks
over it: the call sends a handful of marks instead of one per message, and truncates where the
caller is, from its playout model (within loopback's own delays), where the exact mode could be up
to a whole message short.
"""

from __future__ import annotations

import trio
from test_e2e_playback import LOOPBACK_MS, A, item, serving

from voxbridge.testing import simulate_call
from voxbridge.testing.fake_openai import FakeOpenAIRealtime

BUDGET = 10.0  # wall seconds; the test takes about 2.5 s


async def test_sparse_marks_truncate_where_the_caller_is_on_real_sockets() -> None:
    # 2 s of A in 100 ms deltas from 0.2 s, five times faster than real time; the carrier plays
    # audio 60 ms after it gets it; the caller talks at 1.23 s, about 970 ms into A.
    fake = FakeOpenAIRealtime(
        speak=[(0.2, item(A, 2.0), "an answer")], chunk_ms=100, speech_started_at=[1.23]
    )
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="openai", marks="sparse") as server:
            result = await simulate_call(server.media_url, seconds=2.0, playout_latency=0.06)
    session = fake.sessions[0]
    assert result.clears_received == 1
    heard = result.heard_ms_at(session.speech_started_at[0])
    assert 800 <= heard <= 1100  # (loopback and the fake's pacing move it a little)
    [truncate] = session.truncates
    assert abs(truncate["audio_end_ms"] - heard) <= LOOPBACK_MS
    # 20 media messages; marks after the first, after each 500 ms of audio since a mark, and
    # after the last (its burst ended before the caller talked): five, where exact sends twenty
    assert result.frames_received == 20
    assert result.marks_received == 5
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
