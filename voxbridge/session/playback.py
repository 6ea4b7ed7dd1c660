"""What agent audio the caller has actually heard, item by item: from the carrier's mark echoes,
from a model of the carrier's playout that echoes re-anchor, or, for a carrier without marks, from
that model alone.

A carrier plays the audio we send in order and, when the audio before a mark (Twilio and Telnyx
``mark``, Plivo ``checkpoint``) has finished playing, echoes that mark back; on ``clear`` it drops
the audio still queued. :class:`Playback` numbers every media message the call sends and
remembers, per message, which agent *item* (a provider's unit of speech: an OpenAI conversation
item) it belongs to and how many bytes of that item had been sent up to its end. A mark named after
a message that comes back means everything up to that message was *played*: the caller heard it.
Several items may be queued at the carrier at once (providers send answers faster than real time),
so every item with audio still queued is tracked.

Three modes (``Playback(marks=..., sparse=...)``, from ``Capabilities.marks`` and the ``marks``
setting):

* **exact** (marks, not sparse): a mark after every media message; the heard position is the end
  of the last message whose mark came back, never from a clock. It can be short of the truth by
  at most one media message (the call sends at most ``MAX_MEDIA_BYTES``, 100 ms, per message) and
  is never past it.
* **sparse** (marks, sparse): a mark after the first message of each stretch of playout (an
  answer after a silence), whenever ``SPARSE_MARK_MS`` of audio has gone out since the last one,
  and at the end of each burst -- once the call knows it ended: the next thing from the provider
  is not more audio to play (a transcript, the response's end, a tool call), or the agent hung
  up. So a 2 s answer gets five or six marks instead of twenty. Between echoes the heard
  position comes from the *playout model* (below), re-anchored by every echo, and never past the
  first mark still awaited (that audio has not finished playing). Whether anything is still
  playing (a barge-in's ``clear``, the farewell) is known from echoes as in exact mode, except
  for audio still owing its mark (:attr:`Playback.owes_mark`: the end of a burst not yet known
  to be one), for which the model decides.
* **no marks** (``marks=False``; Vonage): no mark frame is sent and nothing is echoed; the heard
  position is the playout model alone, which is then also what settles the audio.

**The playout model** (one, for both the sparse and the no-marks modes): the carrier plays the
audio out in real time, in order, each message starting ``latency`` after it was sent or when the
audio before it ends, whichever is later; within a message the position is interpolated to the
byte. The call passes its clock's ``now`` (seconds, ``trio.current_time()``) to :meth:`sent`,
:meth:`played`, :meth:`elapse` and :meth:`interrupt` (:attr:`timed` says whether it must).
Without marks the latency is 0: the model knows neither the network's delay nor the carrier's
jitter buffer and may run a little ahead of the truth. In sparse mode each echo re-anchors it: the
audio up to the echoed mark ended when the echo came, what is queued behind it plays from then,
and, if the echoed audio began a stretch, the latency becomes what explains the echo (the
carrier's start latency plus the echo's way back), for the next audio sent after a silence. The
position is then short of the truth by about the echo's way back, where exact mode's is short by
that plus up to one media message. :meth:`finishes_at` says when the audio up to
a message will have played.

**A clear settles its marks at once.** :meth:`Playback.interrupt` drops every pending message when
the call sends the ``clear``: nothing of that audio is left to play, so ``heard_through`` is true
for it from that instant, and nothing waits for an echo. That holds whatever the carrier does with
those marks afterwards (``Capabilities.echoes_cleared_marks``): Twilio and Telnyx echo them at once
(the echoes find nothing and move nothing), Plivo never echoes a checkpoint whose audio was
cleared.

A barge-in (the caller talks over the agent), :meth:`Playback.interrupt`::

    sent:    [A 0..2000 ms ][B 0..2000 ms ]        exact: a mark after every media message
    played:  [A 0..960 ms]^                        the last mark echoed closed A at 960 ms
                          caller barges in here
    ->  Truncation(A, 960), Truncation(B, 0)       A heard to 960 ms; B queued, never heard
    ->  every pending mark is void (the ``clear`` echoes them, unplayed)
    ->  audio of A, B and their responses that still arrives is late: dropped until a new
        response begins (:meth:`admits`, :meth:`response_started`)

In sparse mode the same barge-in truncates A where the model says the caller is (for example 990
ms, if the last echo closed A at 500 ms and 490 ms of playout have passed since) and B at 0. In
every mode the truncations follow from the heard position alone: the item being heard at the heard
millisecond, the items queued behind it at 0. Only marks this object named count: a carrier
echoing a mark never sent, or one voided by a ``clear``, moves nothing.

Pure state: no clock of its own (times are passed in), no I/O. G.711 mu-law at 8 kHz is 8 bytes per
millisecond.
"""

from __future__ import annotations

import math
from bisect import bisect_left

from ..audio import BYTES_PER_MS
from ..providers.events import Truncation

__all__ = ["BYTES_PER_MS", "SPARSE_MARK_MS", "Playback"]

_PREFIX = "vb"
#: Sparse mode: the most audio (ms) that goes out between two marks within a burst: a long
#: answer's model is re-anchored twice a second. In ``benchmarks/bargein.py`` 250 and 1,000 ms
#: were as accurate (the error is the echoes' way back); the fewer marks the better, as long as a
#: stall in mid-answer is corrected soon.
SPARSE_MARK_MS = 500
#: Seconds the model's carrier queue must have run dry before a message for it to begin a new
#: stretch of playout (an answer after a silence: sparse mode marks it, and its echo teaches the
#: latency). A provider sending in real time, a few milliseconds late now and then, does not.
_GAP = 0.02
#: The most playout latency (seconds) an echo may teach the model: beyond it, the echo says more
#: about a stalled carrier than about its jitter buffer.
MAX_LATENCY = 2.0
#: Ids of interrupted items and responses remembered while no new response begins (a provider that
#: never announces responses must not grow them without bound).
MAX_CUT_IDS = 64
#: Items whose offsets are remembered (more of an item may come after others: A, B, A).
MAX_ITEMS = 64
#: Media messages awaiting their mark's echo; beyond this the oldest counts as played (over 80 s of
#: queued audio at one message per 20 ms: a carrier that never echoes marks must not grow memory
#: without bound).
MAX_PENDING_MARKS = 4096
_MAX_SEQ_DIGITS = 18  # mark numbers are ours: short ASCII decimals
_BYTES_PER_SECOND = BYTES_PER_MS * 1000
_SPARSE_MARK_BYTES = SPARSE_MARK_MS * BYTES_PER_MS
#: Seconds of slack when the model compares times: ends are sums of floats, a microsecond (under a
#: tenth of a sample) keeps audio that ends "now" from counting as not played yet.
_SLACK = 1e-6

Key = tuple[object, str]  # (provider session, item or response id)


class _Item:
    """One agent item with audio at the carrier: bytes sent, bytes the caller has heard."""

    __slots__ = ("heard", "item_id", "response_id", "sent", "session")

    def __init__(self, session: object, item_id: str | None, response_id: str | None) -> None:
        self.session = session
        self.item_id = item_id
        self.response_id = response_id
        self.sent = 0
        self.heard = 0


class Playback:
    """What the caller heard of one call's agent audio, across every item queued at the carrier.

    Items are keyed by provider session and id: ids of one session mean nothing in another (a
    resumed or recycled session may number its items afresh).

    Args:
        marks: the carrier echoes marks (``Capabilities.marks``). When false, the heard position
            is the playout model's (see the module docstring), and the call sends no mark frames.
        sparse: with marks, mark only the first message of each stretch of playout, the end of
            each burst and every ``SPARSE_MARK_MS`` of audio, and take the heard position from the
            playout model re-anchored by each echo (the ``marks`` setting's ``sparse``); else a
            mark after every media message (``exact``).
    """

    __slots__ = (
        "_cut_items",
        "_cut_responses",
        "_items",
        "_last",
        "_latency",
        "_marks",
        "_named",
        "_response",
        "_seq",
        "_times",
        "_unmarked",
        "_until",
        "marks",
        "owes_mark",
        "sparse",
        "timed",
    )

    def __init__(self, *, marks: bool = True, sparse: bool = False) -> None:
        #: Whether the carrier echoes marks (else the heard position is the model's alone).
        self.marks = marks
        #: Whether marks are sparse (end of burst, every ``SPARSE_MARK_MS``) rather than exact.
        self.sparse = marks and sparse
        #: Whether the playout model runs: the call must pass its clock's ``now``.
        self.timed = self.sparse or not marks
        self._seq = 0
        # (seq, item, bytes of the item sent up to the end of message seq), oldest first, for every
        # media message not yet known to have played; a list, not a deque: it stays short, and an
        # empty deque costs 600 bytes per call
        self._marks: list[tuple[int, _Item, int]] = []
        # the model (timed only), in step with ``_marks``: (sent at, starts, ends, bytes, whether
        # it began a stretch) of each message; when the audio sent so far ends; the playout
        # latency it assumes (seconds)
        self._times: list[tuple[float, float, float, int, bool]] = []
        self._until = -math.inf
        self._latency = 0.0
        # sparse: the numbers of the messages whose mark was sent and not echoed yet, ascending;
        # bytes sent since the last mark
        self._named: list[int] = []
        self._unmarked = 0
        #: Sparse: the last media message has no mark after it yet (:meth:`owed_mark`).
        self.owes_mark = False
        # items by (session, item id), oldest first: an item's offsets continue across media
        # messages, and across other items in between
        self._items: dict[tuple[object, str | None], _Item] = {}
        self._last: _Item | None = None
        self._response: Key | None = None  # the response begun last
        # interrupted items and responses (dicts as ordered sets), until a new response begins
        self._cut_items: dict[Key, None] = {}
        self._cut_responses: dict[Key, None] = {}

    @property
    def outstanding(self) -> bool:
        """Audio has been sent that the caller has not finished hearing."""
        return bool(self._marks)

    @property
    def last_mark(self) -> int:
        """The number of the last media message sent (0: none yet; a mark is named after the
        message it follows): what :meth:`heard_through` and :meth:`finishes_at` take."""
        return self._seq

    @property
    def latency(self) -> float:
        """The playout latency the model assumes, in seconds: 0 until a sparse-mode echo teaches
        it (and always 0 without marks)."""
        return self._latency

    def heard_through(self, mark: int) -> bool:
        """The caller has heard all the audio sent up to message number ``mark`` (a barge-in's
        ``clear`` counts as heard: nothing of it is left to play). Without marks: as of the last
        :meth:`elapse` (or :meth:`sent`, :meth:`interrupt`)."""
        return not self._marks or self._marks[0][0] > mark

    def finishes_at(self, mark: int) -> float:
        """When (the call's clock, seconds) the audio sent up to message number ``mark`` will
        have played, by the playout model; ``-inf`` if it has already (as of the last
        :meth:`elapse`). ``inf`` when a mark sent at or after it will tell (exact mode always;
        sparse mode unless that audio has no mark after it yet)."""
        if not self.timed or (self._named and self._named[-1] >= mark):
            return math.inf
        finished = -math.inf
        for (seq, _, _), (_, _, end, _, _) in zip(self._marks, self._times, strict=True):
            if seq > mark:
                break
            finished = end
        return finished

    # --- the model -------------------------------------------------------------------------------

    def _place(self, nbytes: int, sent_at: float) -> bool:
        """Model ``nbytes`` sent at ``sent_at``: it plays from ``latency`` later, or when the audio
        before it ends, whichever is later. Returns whether it begins a stretch (the queue had run
        dry for more than ``_GAP``)."""
        start = sent_at + self._latency
        fresh = start > self._until + _GAP
        if start < self._until:
            start = self._until
        self._until = start + nbytes / _BYTES_PER_SECOND
        self._times.append((sent_at, start, self._until, nbytes, fresh))
        return fresh

    def _modelled(self, now: float, limit: int) -> tuple[int, int]:
        """Where the model says the caller is at ``now``: how many of the first ``limit`` pending
        messages have played in full, and how many bytes of the next one (0 past ``limit``)."""
        times = self._times
        done = 0
        while done < limit and times[done][2] <= now + _SLACK:
            done += 1
        if done == limit:
            return done, 0
        _, start, _, nbytes, _ = times[done]
        if start >= now:
            return done, 0
        return done, min(nbytes, round((now - start) * _BYTES_PER_SECOND))

    def _limit(self) -> int:
        """How many pending messages the model may say have played: in sparse mode, not past the
        first mark still awaited (that audio has not finished playing yet)."""
        if self._named and self._marks:
            return self._named[0] - self._marks[0][0] + 1
        return len(self._marks)

    def _settle(self, count: int) -> None:
        """The first ``count`` pending messages have played."""
        marks = self._marks
        for _, item, upto in marks[:count]:
            item.heard = upto
        del marks[:count]
        if self.timed:
            del self._times[:count]
        if not marks:
            self.owes_mark = False  # nothing left that a mark could confirm

    def elapse(self, now: float) -> bool:
        """Move the heard position to what the playout model says has played by ``now`` (the
        call's clock, seconds; within a message, in proportion). Returns True if it moved.

        Without marks the model is all there is. In sparse mode it moves nothing while a mark is
        awaited (its echo settles that audio); once every mark sent has come back, what is left
        owes its mark, and the model settles it. In exact mode it does nothing (only echoes move
        the heard position) and returns False."""
        marks = self._marks
        if not (self.timed and marks) or self._named:
            return False
        done, heard = self._modelled(now, len(marks))
        self._settle(done)
        if heard:  # the first message still queued is playing: part of it is heard
            _, item, upto = marks[0]
            heard += upto - self._times[0][3]
            if heard > item.heard:
                item.heard = heard
                return True
        return done > 0

    @property
    def unheard_ms(self) -> int:
        """Milliseconds of agent audio sent and not yet confirmed played."""
        total, seen = 0, set()
        for _, item, upto in reversed(self._marks):
            if item not in seen:
                seen.add(item)
                total += upto - item.heard
        return total // BYTES_PER_MS

    # --- what the call reports -------------------------------------------------------------------

    def sent(
        self,
        nbytes: int,
        item_id: str | None,
        response_id: str | None,
        session: object,
        now: float = 0.0,
        *,
        burst_end: bool = False,
    ) -> str | None:
        """Record one media message: ``nbytes`` of agent audio of ``item_id`` (of ``session``)
        sent at ``now`` (the call's clock, seconds; read only when :attr:`timed`).

        Returns the name of the mark to send right after it, or ``None`` for no mark. Exact mode
        names a mark after every message; without marks, never. Sparse mode names one when the
        message begins a stretch of playout (by the model, the carrier's queue had run dry: the
        echo times the carrier's start latency), when ``burst_end`` (the call knows that what
        comes next is not more audio to play), or when ``SPARSE_MARK_MS`` of audio has gone out
        since the last mark; otherwise the message owes its mark (:attr:`owes_mark`) until a later
        mark covers it or the call learns that the burst ended (:meth:`owed_mark`).
        """
        fresh = False
        if self.timed:
            if not self.marks:
                self.elapse(now)  # keeps the list as short as the audio still queued
            fresh = self._place(nbytes, now)
        item = self._last
        if item is None or item.item_id != item_id or item.session is not session:
            item = self._item(session, item_id, response_id)
        item.sent += nbytes
        self._seq += 1
        seq = self._seq
        marks = self._marks
        marks.append((seq, item, item.sent))
        if len(marks) > MAX_PENDING_MARKS:  # a carrier that does not echo: assume it played
            self._settle(1)
            named = self._named
            if named and named[0] < marks[0][0]:
                del named[0]
        if not self.marks:
            return None
        if self.sparse:
            self._unmarked += nbytes
            if not (burst_end or fresh) and self._unmarked < _SPARSE_MARK_BYTES:
                self.owes_mark = True
                return None
            self._unmarked = 0
            self.owes_mark = False
            self._named.append(seq)
        return f"{_PREFIX}{seq}"

    def owed_mark(self) -> str | None:
        """Sparse: the call learned that the burst ended with the last media message sent;
        returns the name of the mark to send for it, or ``None`` if no mark is owed. (Sent late,
        after that audio ended, its echo still confirms the audio; the position it re-anchors is
        the end of the burst, so it moves no audio still to play.)"""
        if not self.owes_mark:
            return None
        self.owes_mark = False
        self._unmarked = 0
        self._named.append(self._seq)
        return f"{_PREFIX}{self._seq}"

    def _item(self, session: object, item_id: str | None, response_id: str | None) -> _Item:
        items = self._items
        key = (session, item_id)
        item = items.get(key)
        if item is None:
            item = items[key] = _Item(session, item_id, response_id)
            if len(items) > MAX_ITEMS:  # forget the oldest item heard in full
                for old_key, old in items.items():
                    if old.heard == old.sent and old is not item:
                        del items[old_key]
                        break
        self._last = item
        return item

    def played(self, name: str, now: float | None = None) -> bool:
        """The carrier echoed mark ``name`` (at ``now``, the call's clock: in sparse mode the
        echo re-anchors the playout model there). Returns True if it means audio was heard.

        Marks that are not ours (or never sent), voided by a barge-in (the ``clear`` settled
        them), or echoed twice return False and change nothing; so does any echo without marks
        (``marks`` false: the model is all there is).
        """
        if not self.marks:
            return False
        digits = name[len(_PREFIX) :]
        if not (
            name.startswith(_PREFIX)
            and 0 < len(digits) <= _MAX_SEQ_DIGITS
            and digits.isascii()
            and digits.isdecimal()
        ):
            return False  # not ours
        seq = int(digits)
        if seq > self._seq:
            return False  # never sent: a forged echo confirms nothing
        timing = self.sparse and now is not None  # the echo times the end of that audio
        if self.sparse:
            named = self._named
            at = bisect_left(named, seq)
            if at == len(named) or named[at] != seq:
                return False  # no mark of that name is awaited: never sent, or settled
            del named[: at + 1]
        marks = self._marks
        count = 0
        while count < len(marks) and marks[count][0] <= seq:
            count += 1
        if not count:
            return False
        times = self._times
        ended = times[count - 1][2] if timing else 0.0
        began = timing and any(fresh for *_, fresh in times[:count])
        self._settle(count)
        if timing:
            assert now is not None
            self._reanchor(ended, now, began)
        return True

    def _reanchor(self, ended: float, now: float, began: bool) -> None:
        """Sparse: audio the model had ending at ``ended`` ended at ``now`` (its mark's echo);
        what is queued behind it plays from ``now`` on. If that audio ``began`` a stretch, the
        echo also times the stretch's start: the latency becomes what explains it. (A later echo
        in the same stretch moves the position only: a stall in the middle of a stretch says
        nothing about when the next one will start.)"""
        if began:
            self._latency = min(max(self._latency + now - ended, 0.0), MAX_LATENCY)
        rest = self._times[:]
        self._times.clear()
        self._until = now
        for sent_at, _, _, nbytes, _ in rest:
            self._place(nbytes, sent_at)

    def _model_heard(self, now: float) -> int:
        """Sparse: set each pending item's heard position to the model's at ``now`` (not past the
        first mark still awaited). Returns how many pending messages played in full; the marks
        stay pending (a clear settles them, or their echoes do)."""
        marks = self._marks
        if not marks:
            return 0
        done, heard = self._modelled(now, self._limit())
        for _, item, upto in marks[:done]:
            item.heard = upto
        if heard:
            _, item, upto = marks[done]
            item.heard = upto - self._times[done][3] + heard
        return done

    def interrupt(self, session: object, now: float | None = None) -> list[Truncation] | None:
        """The caller barged in (at ``now``, the call's clock: when :attr:`timed`, the heard
        position is first taken from the playout model there).

        Returns ``None`` when no agent audio is outstanding (nothing to clear). Otherwise the
        carrier's buffer must be cleared, and the result is what to truncate: every item with
        audio still queued, in playback order, at what the caller heard of it (the item being
        heard at the heard millisecond; the items queued behind it at 0, or where an earlier
        stretch of the same item ended) -- only items of ``session`` (the current provider
        session; older sessions are gone) that have an id. Either way, the answer being generated
        (the response begun last) and every queued item and its response count as interrupted:
        their audio that still arrives is late (:meth:`admits`). The pending marks are settled
        here, as the ``clear`` is sent: nothing waits for their echoes.
        """
        heard_in_full = 0  # sparse: pending messages the model says played in full
        if now is not None:
            if self.sparse:
                heard_in_full = self._model_heard(now)
                if heard_in_full == len(self._marks) and not self._named:
                    # only audio that owes its mark is left, and the model (all there is for it)
                    # says it has played: nothing is outstanding
                    self._settle(heard_in_full)
                    heard_in_full = 0
            else:
                self.elapse(now)
        if self._response is not None:
            self._cut(self._cut_responses, self._response)
        if not self._marks:
            return None
        truncations = []
        for item in dict.fromkeys(item for _, item, _ in self._marks):  # in order, each once
            if item.item_id is not None:
                self._cut(self._cut_items, (item.session, item.item_id))
            if item.response_id is not None:
                self._cut(self._cut_responses, (item.session, item.response_id))
        for item in dict.fromkeys(item for _, item, _ in self._marks[heard_in_full:]):
            if item.item_id is not None and item.session is session:
                truncations.append(Truncation(item.item_id, item.heard // BYTES_PER_MS))
        self._marks.clear()  # settled: an echo of them (Twilio's, after the clear) finds nothing
        self._times.clear()
        self._named.clear()
        self._unmarked = 0
        self.owes_mark = False
        self._until = -math.inf  # the carrier's queue is empty: the next audio plays at once
        self._items.clear()
        self._last = None
        return truncations

    def admits(self, item_id: str | None, response_id: str | None, session: object) -> bool:
        """Whether agent audio of ``item_id`` / ``response_id`` (of ``session``) may play: False
        for late audio of an interrupted item or response. Audio without ids always plays."""
        if not (self._cut_items or self._cut_responses):
            return True  # the hot path: no barge-in since the last response began
        return (session, item_id) not in self._cut_items and (
            session,
            response_id,
        ) not in self._cut_responses

    def response_started(self, response_id: str | None, session: object) -> None:
        """``session`` began a new response: earlier answers cannot send more audio."""
        key = (session, response_id) if response_id is not None else None
        if key is not None and key in self._cut_responses:
            return  # not new
        self._response = key
        self._cut_items.clear()
        self._cut_responses.clear()

    @staticmethod
    def _cut(cut: dict[Key, None], key: Key) -> None:
        cut[key] = None
        if len(cut) > MAX_CUT_IDS:
            del cut[next(iter(cut))]
