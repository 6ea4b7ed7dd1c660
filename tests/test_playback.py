"""Mark bookkeeping for barge-in: pure, synchronous, exact."""

from __future__ import annotations

from voxbridge.session.playback import Playback


def test_nothing_outstanding_means_no_interrupt() -> None:
    playback = Playback()
    assert not playback.outstanding
    assert playback.interrupt() is None


def test_heard_position_comes_from_echoed_marks_only() -> None:
    playback = Playback()
    marks = [playback.sent("item_1", 160) for _ in range(5)]  # 5 x 20 ms
    assert playback.outstanding
    assert playback.heard_ms == 0
    assert playback.played(marks[0])
    assert playback.heard_ms == 20
    assert playback.played(marks[2])  # marks echo in order; 2 implies 1
    assert playback.heard_ms == 60
    assert playback.interrupt() == ("item_1", 60)
    assert not playback.outstanding


def test_marks_voided_by_clear_do_not_count_as_heard() -> None:
    playback = Playback()
    marks = [playback.sent("item_1", 800) for _ in range(3)]  # 100 ms each
    playback.played(marks[0])
    assert playback.interrupt() == ("item_1", 100)
    # Twilio echoes the discarded marks after clear: they were never played.
    assert not playback.played(marks[1])
    assert not playback.played(marks[2])
    # New speech starts a new item and counts from zero.
    mark = playback.sent("item_2", 160)
    assert playback.heard_ms == 0
    assert playback.played(mark)
    assert playback.heard_ms == 20
    assert playback.interrupt() is None  # all heard: nothing to truncate


def test_item_change_resets_the_offset() -> None:
    playback = Playback()
    first = playback.sent("a", 1600)
    playback.played(first)
    second = playback.sent("b", 160)
    assert playback.heard_ms == 0  # 'a' was heard, but the current item is 'b'
    playback.sent("b", 160)
    playback.played(second)
    assert playback.interrupt() == ("b", 20)


def test_foreign_marks_are_ignored() -> None:
    playback = Playback()
    playback.sent("a", 160)
    assert not playback.played("someone-elses-mark")
    assert not playback.played("vbx")
    assert playback.outstanding
