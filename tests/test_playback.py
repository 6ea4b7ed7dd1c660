"""What the caller heard, from mark echoes: pure, synchronous, exact.

Each table row is a script of what the call did (``send`` agent audio, a mark ``echo`` from the
carrier, a barge-in) and what :class:`Playback` must conclude. Twilio's behaviour is the model: marks
echo in order once the audio before them has played, and a ``clear`` echoes every pending mark at once
(they were never played).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from voxbridge.providers.events import Truncation
from voxbridge.session.playback import (
    MAX_CUT_IDS,
    MAX_ITEMS,
    MAX_PENDING_MARKS,
    SPARSE_MARK_MS,
    Playback,
)
from voxbridge.settings import Settings, SettingsError

S1, S2 = object(), object()  # provider sessions
MS = 8  # bytes of mu-law per millisecond


def run(script: Sequence[tuple[Any, ...]]) -> tuple[Playback, list[str], list[Any]]:
    """Play ``script``; returns the playback, the mark names sent, and each step's result."""
    playback, marks, results = Playback(), [], []
    for step, *args in script:
        if step == "send":  # (ms, item, response[, session])
            ms, item, response, *session = args
            marks.append(playback.sent(ms * MS, item, response, session[0] if session else S1))
            results.append(marks[-1])
        elif step == "echo":  # (index of the mark sent,)
            results.append(playback.played(marks[args[0]]))
        elif step == "barge":  # ([session],)
            results.append(playback.interrupt(args[0] if args else S1))
        elif step == "response":  # (response[, session])
            playback.response_started(args[0], args[1] if len(args) > 1 else S1)
            results.append(None)
        else:  # pragma: no cover - a typo in a table
            raise AssertionError(step)
    return playback, marks, results


# (script, the barge-in's result) -- the last step of each script is the barge-in.
INTERRUPTIONS = {
    "nothing sent": ([("barge",)], None),
    "one item, nothing heard yet": (
        [("send", 100, "a", "r1"), ("send", 100, "a", "r1"), ("barge",)],
        [Truncation("a", 0)],
    ),
    "one item, heard to a mark": (
        [
            *[("send", 20, "a", "r1")] * 5,
            ("echo", 0),
            ("echo", 2),  # marks echo in order: 2 implies 1
            ("barge",),
        ],
        [Truncation("a", 60)],
    ),
    "one item, all heard": (
        [("send", 100, "a", "r1"), ("echo", 0), ("barge",)],
        None,  # nothing outstanding: not a barge-in, nothing to clear
    ),
    "two items, caller in the first": (
        [
            *[("send", 100, "a", "r1")] * 20,  # A: 2 s, sent faster than real time
            *[("send", 100, "b", "r2")] * 20,  # B: 2 s behind it
            ("echo", 9),  # the caller heard 1.0 s of A
            ("barge",),
        ],
        [Truncation("a", 1000), Truncation("b", 0)],
    ),
    "two items, caller in the second": (
        [
            *[("send", 100, "a", "r1")] * 20,
            *[("send", 100, "b", "r2")] * 20,
            ("echo", 24),  # all of A, then 500 ms of B
            ("barge",),
        ],
        [Truncation("b", 500)],  # A was heard in full: nothing to tell about it
    ),
    "two items, A's last mark echoed": (
        [*[("send", 100, "a", "r1")] * 20, ("send", 100, "b", "r2"), ("echo", 19), ("barge",)],
        [Truncation("b", 0)],
    ),
    "three items, caller in the first": (
        [
            ("send", 100, "a", "r1"),
            ("send", 100, "a", "r1"),
            ("send", 300, "b", "r1"),  # one response may hold several items
            ("send", 200, "c", "r2"),
            ("echo", 0),
            ("barge",),
        ],
        [Truncation("a", 100), Truncation("b", 0), Truncation("c", 0)],
    ),
    "three items, caller in the second": (
        [
            ("send", 100, "a", "r1"),
            ("send", 300, "b", "r1"),
            ("send", 300, "b", "r1"),
            ("send", 200, "c", "r2"),
            ("echo", 1),
            ("barge",),
        ],
        [Truncation("b", 300), Truncation("c", 0)],
    ),
    "three items, caller in the third": (
        [
            ("send", 100, "a", "r1"),
            ("send", 300, "b", "r1"),
            ("send", 200, "c", "r2"),
            ("send", 200, "c", "r2"),
            ("echo", 2),
            ("barge",),
        ],
        [Truncation("c", 200)],
    ),
    "interleaved items: A heard, B being heard, A again queued": (
        [
            *[("send", 100, "a", "r1")] * 5,
            *[("send", 50, "b", "r1")] * 10,
            *[("send", 100, "a", "r1")] * 5,
            ("echo", 9),  # all 500 ms of A, then 250 ms of B
            ("barge",),
        ],
        [Truncation("b", 250), Truncation("a", 500)],  # A's first stretch stays heard
    ),
    "audio without item ids (Ultravox)": (
        [("send", 100, None, None), ("send", 100, None, None), ("echo", 0), ("barge",)],
        [],  # clear the carrier; nothing to truncate
    ),
    "items of an earlier session are not truncated in the new one": (
        [
            ("send", 100, "a", "r1", S1),
            ("send", 100, "a", "r1", S1),
            ("send", 100, "x", "r9", S2),  # resumed: the new session's first answer
            ("echo", 0),
            ("barge", S2),
        ],
        [Truncation("x", 0)],
    ),
}


@pytest.mark.parametrize("name", INTERRUPTIONS)
def test_interrupt(name: str) -> None:
    script, expected = INTERRUPTIONS[name]
    playback, _, results = run(script)
    assert results[-1] == expected
    assert not playback.outstanding  # a barge-in (or none needed) leaves nothing outstanding


def test_an_item_continues_across_media_messages_and_marks() -> None:
    # The offset of an item counts all its audio sent, whatever the marks between.
    playback, _, results = run(
        [("send", 100, "a", "r1"), ("echo", 0), ("send", 40, "a", "r1"), ("barge",)]
    )
    assert results[-1] == [Truncation("a", 100)]
    assert not playback.admits("a", "r1", S1)


def test_marks_echoed_after_a_clear_were_never_heard() -> None:
    playback, marks, results = run([*[("send", 100, "a", "r1")] * 3, ("echo", 0), ("barge",)])
    assert results[-1] == [Truncation("a", 100)]
    # Twilio echoes the discarded marks after the clear, at once: they count for nothing.
    assert not playback.played(marks[1])
    assert not playback.played(marks[2])
    assert not playback.outstanding
    # A new answer starts from zero; its own marks count.
    playback.response_started("r2", S1)
    mark = playback.sent(20 * MS, "b", "r2", S1)
    assert not playback.played(marks[2])  # an old echo arriving late changes nothing
    assert playback.outstanding
    assert playback.played(mark)
    assert playback.interrupt(S1) is None  # all heard


def test_foreign_and_duplicate_marks_are_ignored() -> None:
    playback = Playback()
    first = playback.sent(160, "a", None, S1)
    playback.sent(160, "a", None, S1)
    assert not playback.played("someone-elses-mark")
    assert not playback.played("vbx")
    assert not playback.played("vb")
    assert playback.played(first)
    assert not playback.played(first)  # echoed twice
    assert playback.outstanding
    assert playback.interrupt(S1) == [Truncation("a", 20)]


def test_unheard_ms_counts_every_queued_item() -> None:
    playback, marks, _ = run(
        [*[("send", 100, "a", "r1")] * 3, *[("send", 50, "b", "r2")] * 2, ("echo", 1)]
    )
    assert playback.unheard_ms == 100 + 100  # the rest of A, all of B
    playback.played(marks[-1])
    assert playback.unheard_ms == 0
    assert not playback.outstanding


# --- late audio: after a barge-in, the interrupted answer stays silent --------------------------


def test_late_chunks_of_the_interrupted_item_are_refused() -> None:
    playback, _, _ = run([*[("send", 100, "x", "r1")] * 10, ("echo", 3), ("barge",)])
    assert not playback.admits("x", "r1", S1)  # three more chunks of X arrive: all refused
    assert not playback.admits("x", None, S1)
    assert not playback.admits("y", "r1", S1)  # another item of the same response
    assert playback.admits(None, None, S1)  # audio the provider does not label always plays
    playback.response_started("r2", S1)  # a new answer: the window closes
    assert playback.admits("z", "r2", S1)
    assert playback.admits("x", "r1", S1)  # (impossible from a real provider; nothing remembered)


def test_the_response_in_progress_is_cut_even_before_its_audio_arrives() -> None:
    playback = Playback()
    playback.response_started("r1", S1)
    assert playback.interrupt(S1) is None  # no audio yet: nothing to clear or truncate
    assert not playback.admits("a", "r1", S1)  # but its audio, when it comes, is late
    assert playback.admits("b", "r2", S1)


def test_every_queued_item_and_its_response_is_cut() -> None:
    playback, _, _ = run(
        [("send", 100, "a", "r1"), ("send", 100, "b", "r2"), ("send", 100, "c", "r3"), ("barge",)]
    )
    for item, response in (("a", "r1"), ("b", "r2"), ("c", "r3")):
        assert not playback.admits(item, response, S1)
        assert not playback.admits(item, "r-other", S1)
        assert not playback.admits("other", response, S1)


def test_a_response_started_twice_does_not_reopen_the_window() -> None:
    playback, _, _ = run([("response", "r1"), ("send", 100, "a", "r1"), ("barge",)])
    playback.response_started("r1", S1)  # a repeat of the cut one is not a new answer
    assert not playback.admits("a", "r1", S1)


def test_cut_ids_are_bounded_without_new_responses() -> None:
    playback = Playback()
    for n in range(3 * MAX_CUT_IDS):
        playback.sent(8, f"item{n}", f"resp{n}", S1)
        playback.interrupt(S1)
    assert not playback.admits(f"item{3 * MAX_CUT_IDS - 1}", None, S1)
    assert playback.admits("item0", "resp0", S1)  # the oldest were forgotten
    assert len(playback._cut_items) == len(playback._cut_responses) == MAX_CUT_IDS


# --- a farewell: the agent hangs up after its goodbye --------------------------------------------


def test_a_farewell_is_heard_when_the_mark_after_the_last_audio_echoes() -> None:
    playback, marks, _ = run([*[("send", 100, "bye", "r1")] * 15])  # 1.5 s, sent at once
    assert playback.outstanding and playback.unheard_ms == 1500
    for index in range(14):
        assert playback.played(marks[index])
        assert playback.outstanding  # not yet: the goodbye is still playing
    assert playback.played(marks[14])
    assert not playback.outstanding and playback.unheard_ms == 0


# --- what a carrier cannot do: move the heard position with marks we never sent ------------------


@pytest.mark.parametrize(
    "name",
    [
        "vb\u00b2",  # a superscript two: str.isdigit() says yes, int() says no
        "vb\u0661",  # an Arabic-Indic one: int() reads it as 1
        "vb" + "1" * 5000,  # past int()'s digit limit
        "vb-1",
        "vb 1",
        "vb+1",
        "VB1",
        "vb999999",  # well formed, but never sent
        "vb3",  # the next one, not sent yet
    ],
)
def test_marks_we_did_not_send_move_nothing(name: str) -> None:
    playback = Playback()
    first = playback.sent(800, "a", "r1", S1)
    playback.sent(800, "a", "r1", S1)
    assert not playback.played(name)
    assert playback.outstanding and playback.unheard_ms == 200
    assert playback.played(first)
    assert playback.interrupt(S1) == [Truncation("a", 100)]


def test_an_item_keeps_its_offset_after_other_items_in_between() -> None:
    _, _, results = run(
        [
            *[("send", 100, "a", "r1")] * 10,
            ("send", 100, "b", "r1"),
            *[("send", 100, "a", "r1")] * 10,
            ("echo", 20),  # A's first second, B, then A to 2000 ms
            ("send", 100, "a", "r1"),
            ("barge",),
        ]
    )
    assert results[-1] == [Truncation("a", 2000)]


def test_ids_are_per_session() -> None:
    # A resumed session may number its items and responses afresh: what was cut in the old one
    # does not silence the new one.
    playback, _, _ = run([("response", "r1", S1), ("send", 100, "a", "r1", S1), ("barge", S1)])
    assert not playback.admits("a", "r1", S1)
    assert playback.admits("a", "r1", S2)
    playback.response_started("r1", S2)  # S2's first answer is new, whatever its id
    assert playback.admits("a", "r1", S2)


def test_items_are_bounded() -> None:
    playback = Playback()
    for n in range(3 * MAX_ITEMS):
        playback.played(playback.sent(8, f"item{n}", "r1", S1))
    assert len(playback._items) == MAX_ITEMS
    assert (S1, f"item{3 * MAX_ITEMS - 1}") in playback._items  # the newest are kept


def test_a_carrier_that_never_echoes_cannot_grow_the_marks() -> None:
    playback = Playback()
    for _ in range(MAX_PENDING_MARKS + 100):
        playback.sent(160, "a", "r1", S1)
    assert len(playback._marks) == MAX_PENDING_MARKS
    # the oldest were taken as played: their audio is long over
    assert playback.unheard_ms == MAX_PENDING_MARKS * 20
    assert playback.interrupt(S1) == [Truncation("a", 100 * 20)]


# --- a clear settles its marks: nothing waits for echoes a carrier may never send (Plivo) ------


def test_a_clear_settles_every_pending_mark_at_once_without_any_echo() -> None:
    # Plivo never echoes a checkpoint whose audio clearAudio discarded
    # (Capabilities.echoes_cleared_marks false): the clear itself settles them.
    playback, marks, results = run([*[("send", 100, "a", "r1")] * 4, ("echo", 0), ("barge",)])
    assert results[-1] == [Truncation("a", 100)]
    last = playback.last_mark
    assert last == 4
    assert playback.heard_through(last)  # at the clear, with no echo at all
    assert not playback.outstanding and playback.unheard_ms == 0
    # and Twilio's echoes of them (echoes_cleared_marks true), arriving next, change nothing
    assert [playback.played(name) for name in marks[1:]] == [False, False, False]
    assert playback.heard_through(last)


def test_with_marks_the_estimate_stays_out_of_it() -> None:
    playback = Playback()
    playback.sent(800, "a", "r1", S1, now=0.0)
    assert playback.finishes_at(playback.last_mark) == math.inf  # only the echo can tell
    assert not playback.elapse(10.0)  # no clock moves the heard position
    assert playback.outstanding and playback.unheard_ms == 100
    assert playback.interrupt(S1, now=10.0) == [Truncation("a", 0)]


# --- without marks (Vonage): the heard position is a real-time playout estimate -----------------


def estimate(script: Sequence[tuple[Any, ...]]) -> tuple[Playback, list[Any]]:
    """``script`` on a ``Playback(marks=False)``: ``("send", at, ms, item, response)``,
    ``("barge", at)``, ``("elapse", at)``; returns the playback and each step's result."""
    playback, results = Playback(marks=False), []
    for step, at, *args in script:
        if step == "send":
            ms, item, response = args
            results.append(playback.sent(ms * MS, item, response, S1, now=at))
        elif step == "barge":
            results.append(playback.interrupt(S1, now=at))
        elif step == "elapse":
            results.append(playback.elapse(at))
        else:  # pragma: no cover - a typo in a table
            raise AssertionError(step)
    return playback, results


# (script, the barge-in's result) -- times in seconds, audio sent faster than real time plays
# out back to back from when its first byte was sent.
ESTIMATES = {
    "one item sent at once, barge-in inside its second chunk": (
        [*[("send", 0.0, 100, "a", "r1")] * 3, ("barge", 0.15)],
        [Truncation("a", 150)],  # interpolated within the chunk, to the millisecond
    ),
    "a chunk sent after the queue ran dry plays from when it was sent": (
        [("send", 0.0, 100, "a", "r1"), ("send", 0.5, 100, "a", "r1"), ("barge", 0.55)],
        [Truncation("a", 150)],  # 100 ms from 0.0, then 50 of the chunk sent at 0.5
    ),
    "a chunk sent while audio plays queues behind it": (
        [("send", 0.0, 100, "a", "r1"), ("send", 0.05, 100, "a", "r1"), ("barge", 0.15)],
        [Truncation("a", 150)],  # the second chunk started at 0.1, not at 0.05
    ),
    "two items, caller in the second": (
        [
            *[("send", 0.0, 100, "a", "r1")] * 2,
            *[("send", 0.0, 100, "b", "r2")] * 2,
            ("barge", 0.25),
        ],
        [Truncation("b", 50)],  # A heard in full
    ),
    "two items, caller in the first": (
        [
            *[("send", 0.0, 100, "a", "r1")] * 2,
            *[("send", 0.0, 100, "b", "r2")] * 2,
            ("barge", 0.1),
        ],
        [Truncation("a", 100), Truncation("b", 0)],
    ),
    "all played out: no barge-in": (
        [("send", 1.0, 100, "a", "r1"), ("barge", 1.1)],
        None,
    ),
    "nothing played yet": (
        [("send", 2.0, 100, "a", "r1"), ("send", 2.0, 100, "b", "r1"), ("barge", 2.0)],
        [Truncation("a", 0), Truncation("b", 0)],
    ),
}


@pytest.mark.parametrize("name", ESTIMATES)
def test_the_estimate_truncates_at_the_real_time_position(name: str) -> None:
    script, expected = ESTIMATES[name]
    playback, results = estimate(script)
    assert results[-1] == expected
    assert not playback.outstanding


def test_the_estimate_says_when_the_audio_will_have_played() -> None:
    playback, _ = estimate([*[("send", 3.0, 100, "a", "r1")] * 5])  # 500 ms sent at 3.0
    second, last = 2, playback.last_mark
    assert playback.finishes_at(second) == pytest.approx(3.2)
    assert playback.finishes_at(last) == pytest.approx(3.5)
    assert playback.unheard_ms == 500
    assert playback.elapse(3.25)  # two chunks played, half the third
    assert playback.heard_through(second) and not playback.heard_through(last)
    assert playback.unheard_ms == 250
    assert playback.finishes_at(second) == -math.inf  # already played
    assert not playback.elapse(3.25)  # nothing more by then
    assert playback.elapse(3.5)
    assert playback.heard_through(last) and playback.unheard_ms == 0
    assert not playback.outstanding


def test_after_a_clear_the_next_audio_plays_from_when_it_is_sent() -> None:
    _, results = estimate(
        [
            *[("send", 0.0, 100, "a", "r1")] * 10,  # 1 s queued at the carrier
            ("barge", 0.2),  # cleared: the queue is empty
            ("send", 0.3, 100, "b", "r2"),
            ("barge", 0.35),
        ]
    )
    assert results[-3] == [Truncation("a", 200)]
    assert results[-1] == [Truncation("b", 50)]  # not behind A's cleared 800 ms


def test_echoes_move_nothing_without_marks() -> None:
    playback = Playback(marks=False)
    assert playback.sent(800, "a", "r1", S1, now=0.0) is None  # no mark to send
    assert not playback.played("vb1")  # a carrier without marks has nothing to echo
    assert playback.outstanding and playback.unheard_ms == 100
    assert playback.interrupt(S1, now=0.05) == [Truncation("a", 50)]


def test_the_estimate_keeps_no_more_entries_than_audio_queued() -> None:
    # Six minutes of 20 ms chunks sent in real time: each has played before the next one is sent.
    playback = Playback(marks=False)
    for n in range(18_000):
        playback.sent(160, "a", "r1", S1, now=n * 0.02)
        assert len(playback._marks) <= 2
    assert playback.interrupt(S1, now=18_000 * 0.02) is None  # all of it played


# --- sparse marks: fewer marks, the heard position from the playout model ------------------------


def sparse_marks(pattern: Sequence[tuple[float, int, bool]]) -> tuple[Playback, list[int]]:
    """Send ``pattern`` (``(at, ms, burst_end)`` per media message, item "a") in sparse mode;
    returns the playback and the numbers of the messages a mark was named after."""
    playback, named = Playback(sparse=True), []
    for number, (at, ms, burst_end) in enumerate(pattern, 1):
        if playback.sent(ms * MS, "a", "r1", S1, now=at, burst_end=burst_end) is not None:
            named.append(number)
    return playback, named


BURST = [(0.0, 100, False)] * 11 + [(0.0, 100, True)]  # 1.2 s at once; its end known
STREAM = [(n * 0.02, 20, n == 99) for n in range(100)]  # 2 s in real time, 20 ms messages


@pytest.mark.parametrize(
    ("pattern", "expected", "owes"),
    [
        # the first message (a stretch begins), every 500 ms after a mark, the burst's end
        (BURST, [1, 6, 11, 12], False),
        (STREAM, [1, 26, 51, 76, 100], False),
        # the end not known yet: the last message owes its mark
        ([(0.0, 100, False)] * 12, [1, 6, 11], True),
        # two answers with a silence between: each begins a stretch
        ([(0.0, 100, False)] * 3 + [(1.0, 100, False)] * 3, [1, 4], True),
        # an answer sent while the one before still plays continues its stretch
        ([(0.0, 100, False)] * 3 + [(0.25, 100, True)], [1, 4], False),
    ],
    ids=["burst", "real-time stream", "end not known", "two answers", "back to back"],
)
def test_sparse_marks_for_a_burst_pattern(
    pattern: list[tuple[float, int, bool]], expected: list[int], owes: bool
) -> None:
    playback, named = sparse_marks(pattern)
    assert named == expected
    assert playback.owes_mark is owes
    assert playback.last_mark == len(pattern)


def test_exact_mode_names_a_mark_after_every_message() -> None:
    playback = Playback()
    names = [playback.sent(800, "a", "r1", S1, burst_end=False) for _ in range(12)]
    assert names == [f"vb{n}" for n in range(1, 13)]
    assert not playback.owes_mark and playback.owed_mark() is None


def test_an_owed_mark_names_the_last_message_once() -> None:
    playback, named = sparse_marks([(0.0, 100, False)] * 3)
    assert named == [1] and playback.owes_mark
    assert playback.finishes_at(3) == pytest.approx(0.3)  # until a mark is sent, the model tells
    assert playback.owed_mark() == "vb3"
    assert not playback.owes_mark and playback.owed_mark() is None
    assert playback.finishes_at(3) == math.inf  # the echo tells now
    assert playback.played("vb1", 0.1)
    assert not playback.heard_through(3)
    assert playback.played("vb3", 0.3)
    assert playback.heard_through(3) and not playback.outstanding


def test_sparse_echoes_of_marks_never_named_move_nothing() -> None:
    playback, named = sparse_marks(BURST)
    assert named == [1, 6, 11, 12]
    for forged in ("vb2", "vb5", "vb7", "vb13"):  # media messages without a mark, or none
        assert not playback.played(forged, 0.4)
    assert playback.unheard_ms == 1200
    assert playback.played("vb1", 0.1)
    assert not playback.played("vb1", 0.2)  # echoed twice
    assert playback.unheard_ms == 1100


def test_the_heard_position_between_marks_comes_from_the_model() -> None:
    playback, _ = sparse_marks(BURST)
    assert playback.latency == 0.0
    # The first 100 ms ended at 0.18, not 0.1: the carrier starts playing 80 ms after it gets
    # audio. The rest plays on from there.
    assert playback.played("vb1", 0.18)
    assert playback.latency == pytest.approx(0.08)
    assert playback.interrupt(S1, now=0.55) == [Truncation("a", 100 + 370)]


def test_an_echo_in_the_middle_of_a_stretch_reanchors_the_position_not_the_latency() -> None:
    playback, _ = sparse_marks(BURST)
    assert playback.played("vb1", 0.18)  # the stretch began 80 ms after it was sent
    # The model has the first 600 ms ending at 0.68; the carrier stalled 70 ms on the way.
    assert playback.played("vb6", 0.75)
    assert playback.latency == pytest.approx(0.08)  # a stall says nothing about the next start
    assert playback.interrupt(S1, now=0.9) == [Truncation("a", 600 + 150)]


def test_a_new_answer_plays_the_learned_latency_after_it_is_sent() -> None:
    playback, _ = sparse_marks(BURST)
    playback.played("vb1", 0.18)
    playback.played("vb12", 1.28)
    assert not playback.outstanding
    playback.response_started("r2", S1)
    assert playback.sent(800, "b", "r2", S1, now=3.0) == "vb13"  # a stretch begins
    assert playback.sent(800, "b", "r2", S1, now=3.0) is None
    assert playback.interrupt(S1, now=3.13) == [Truncation("b", 50)]  # from 3.08, not 3.0


def test_the_model_never_goes_past_a_mark_still_awaited() -> None:
    playback, _ = sparse_marks(BURST)
    # No echo at all: by the model (latency 0) the caller would be 350 ms in, but the mark after
    # the first 100 ms has not come back, so that audio has not finished playing.
    assert playback.interrupt(S1, now=0.35) == [Truncation("a", 100)]


def test_audio_owing_its_mark_is_settled_by_the_model_alone() -> None:
    playback, named = sparse_marks([(0.0, 100, False)] * 3)
    assert named == [1]
    assert playback.played("vb1", 0.1)
    assert playback.finishes_at(3) == pytest.approx(0.3)  # the farewell waits for the model
    assert playback.elapse(0.25) and playback.unheard_ms == 50
    assert playback.elapse(0.3) and playback.heard_through(3) and not playback.outstanding
    assert not playback.owes_mark  # nothing left for a mark to confirm


def test_a_barge_in_after_audio_owing_its_mark_has_played_clears_nothing() -> None:
    playback, _ = sparse_marks([(0.0, 100, False)] * 3)
    playback.played("vb1", 0.1)
    assert playback.interrupt(S1, now=0.5) is None  # the model: all of it played
    assert not playback.outstanding and not playback.owes_mark


def test_with_a_mark_awaited_a_barge_in_clears_even_if_the_model_says_all_played() -> None:
    playback, _ = sparse_marks(BURST)
    playback.played("vb1", 0.1)
    playback.played("vb6", 0.6)
    playback.played("vb11", 1.1)
    # vb12 (the last) has not come back: the carrier may still be playing, whatever the model
    # says, so the carrier is cleared; the model has A heard in full, so nothing is truncated
    assert playback.interrupt(S1, now=1.5) == []
    assert not playback.admits("a", "r1", S1)


def played_out(sparse: bool, barge_at: float) -> list[Truncation] | None:
    """Items A (300 ms), B (300 ms) and C (200 ms) sent at once in 100 ms messages, to a carrier
    that plays them 50 ms after it gets them, back to back, and echoes each mark the call named
    the instant the audio before it ended; the caller barges in at ``barge_at``."""
    playback = Playback(sparse=sparse)
    items = ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    echoes = []
    for number, item in enumerate(items, 1):
        name = playback.sent(800, item, f"r-{item}", S1, now=0.0, burst_end=number == len(items))
        if name is not None:
            echoes.append((0.05 + number * 0.1, name))
    for at, name in echoes:
        if at <= barge_at + 1e-9:
            assert playback.played(name, at)
    return playback.interrupt(S1, now=barge_at)


@pytest.mark.parametrize(
    ("barge_at", "expected"),
    [
        (0.15, [Truncation("a", 100), Truncation("b", 0), Truncation("c", 0)]),
        (0.35, [Truncation("b", 0), Truncation("c", 0)]),  # A heard in full: not named
        (0.45, [Truncation("b", 100), Truncation("c", 0)]),
        (0.65, [Truncation("c", 0)]),
        (0.75, [Truncation("c", 100)]),
        (0.85, None),  # all of it heard: nothing to clear
    ],
)
def test_barge_in_across_queued_items_is_the_same_in_both_modes(
    barge_at: float, expected: list[Truncation] | None
) -> None:
    # At the end of a media message, where exact mode's last echo is the truth, both modes say the
    # same: the item being heard at the heard millisecond, the items queued behind it at 0.
    assert played_out(False, barge_at) == expected
    assert played_out(True, barge_at) == expected


@pytest.mark.parametrize(
    ("barge_at", "sparse", "exact"),
    [
        (0.29, 240, 200),  # 240 ms into A: the model says so; the last echo closed A at 200
        (0.47, 420, 400),  # 120 ms into B
        (0.79, 740, 700),  # 40 ms into C's last message
    ],
)
def test_within_a_message_sparse_is_the_truth_and_exact_the_last_echo(
    barge_at: float, sparse: int, exact: int
) -> None:
    def truncations(heard: int) -> list[Truncation]:
        """A heard ``heard`` ms in all: the item being heard at its millisecond, those behind
        it at 0, those heard in full not named."""
        out, start = [], 0
        for item, ms in (("a", 300), ("b", 300), ("c", 200)):
            if heard < start + ms:
                out.append(Truncation(item, max(0, heard - start)))
            start += ms
        return out

    assert played_out(True, barge_at) == truncations(sparse)
    assert played_out(False, barge_at) == truncations(exact)


def test_without_marks_the_sparse_setting_changes_nothing() -> None:
    playback = Playback(marks=False, sparse=True)
    assert not playback.sparse and playback.timed
    assert playback.sent(800, "a", "r1", S1, now=0.0) is None  # no mark frame, ever
    assert playback.sent(800, "a", "r1", S1, now=0.0, burst_end=True) is None
    assert not playback.owes_mark and playback.owed_mark() is None
    assert not playback.played("vb1", 0.05)
    assert playback.interrupt(S1, now=0.15) == [Truncation("a", 150)]  # the estimate, as before


def test_the_setting_documents_the_mark_spacing() -> None:
    assert f"every {SPARSE_MARK_MS} ms" in attrs.fields(Settings).marks.metadata["help"]
    assert Settings().marks == "exact"
    assert Settings(marks="sparse").marks == "sparse"
    with pytest.raises(SettingsError, match="VOXBRIDGE_MARKS must be one of exact, sparse"):
        Settings(marks="none")
