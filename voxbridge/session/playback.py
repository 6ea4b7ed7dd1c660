"""What agent audio the caller has actually heard, item by item: from the carrier's mark echoes, or,
for a carrier without marks, from a real-time playout model.

A carrier plays the audio we send in order and, when the audio before a mark (Twilio and Telnyx
``mark``, Plivo ``checkpoint``) has finished playing, echoes that mark back; on ``clear`` it drops
the audio still queued. So after every media message the call sends a mark, and :class:`Playback`
remembers, per mark, which agent *item* (a provider's unit of speech: an OpenAI conversation item)
it closes and how many bytes of that item had been sent up to it. A mark that comes back means
everything before it was *played*: the caller heard it. Several items may be queued at the carrier
at once (providers send answers faster than real time), so every item with audio still queued is
tracked.

**A clear settles its marks at once.** :meth:`Playback.interrupt` drops every pending mark when the
call sends the ``clear``: nothing of that audio is left to play, so ``heard_through`` is true for it
from that instant, and nothing waits for an echo. That holds whatever the carrier does with those
marks afterwards (``Capabilities.echoes_cleared_marks``): Twilio and Telnyx echo them at once (the
echoes find nothing and move nothing), Plivo never echoes a checkpoint whose audio was cleared.

**Without marks** (``Playback(marks=False)``; Vonage, ``Capabilities.marks`` false), no mark frame
is sent and nothing is echoed. The heard position is then *the best estimate*: the carrier is taken
to play the audio out in real time, in order, each chunk starting when it was sent or when the
audio before it ends, whichever is later (the first unplayed byte plays at once). The call passes
its clock's ``now`` (seconds, ``trio.current_time()``) to :meth:`Playback.sent`,
:meth:`Playback.elapse` and :meth:`Playback.interrupt`; :meth:`Playback.finishes_at` says when the
audio up to a mark will have played. The estimate interpolates within a chunk, but it knows
neither the network's delay nor the carrier's jitter buffer: it may run a little ahead of the truth.

A barge-in (the caller talks over the agent), :meth:`Playback.interrupt`::

    sent:    [A 0..2000 ms ][B 0..2000 ms ]        marks after every media message
    played:  [A 0..960 ms]^                        the last mark echoed closed A at 960 ms
                          caller barges in here
    ->  Truncation(A, 960), Truncation(B, 0)       A heard to 960 ms; B queued, never heard
    ->  every pending mark is void (the ``clear`` echoes them, unplayed)
    ->  audio of A, B and their responses that still arrives is late: dropped until a new
        response begins (:meth:`admits`, :meth:`response_started`)

With marks, the heard position comes from echoed marks, never from a clock, so it can be short of
the truth by at most one media message (the call sends at most ``MAX_MEDIA_BYTES``, 100 ms, per
message) and is never past it. Only marks this object named count: a carrier echoing a mark never
sent, or one voided by a ``clear``, moves nothing.

Pure state: no clock of its own (times are passed in), no I/O. G.711 mu-law at 8 kHz is 8 bytes per
millisecond.
"""

from __future__ import annotations

import math

from ..audio import BYTES_PER_MS
from ..providers.events import Truncation

__all__ = ["BYTES_PER_MS", "Playback"]

_PREFIX = "vb"
#: Ids of interrupted items and responses remembered while no new response begins (a provider that
#: never announces responses must not grow them without bound).
MAX_CUT_IDS = 64
#: Items whose offsets are remembered (more of an item may come after others: A, B, A).
MAX_ITEMS = 64
#: Marks awaiting their echo; beyond this the oldest counts as played (over 80 s of queued audio
#: at one mark per 20 ms: a carrier that never echoes marks must not grow memory without bound).
MAX_PENDING_MARKS = 4096
_MAX_SEQ_DIGITS = 18  # mark numbers are ours: short ASCII decimals
_BYTES_PER_SECOND = BYTES_PER_MS * 1000
#: Seconds of slack when the estimate compares times: chunk ends are sums of floats, a microsecond
#: (under a tenth of a sample) keeps audio that ends "now" from counting as not played yet.
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
    """Mark bookkeeping for one call's agent audio, across every item queued at the carrier.

    Items are keyed by provider session and id: ids of one session mean nothing in another (a
    resumed or recycled session may number its items afresh).

    Args:
        marks: the carrier echoes marks (``Capabilities.marks``). When false, the heard position
            is estimated from the times audio was sent (see the module docstring), and the call
            sends no mark frames: the names :meth:`sent` returns only number the audio.
    """

    __slots__ = (
        "_cut_items",
        "_cut_responses",
        "_items",
        "_last",
        "_marks",
        "_response",
        "_seq",
        "_times",
        "_until",
        "marks",
    )

    def __init__(self, *, marks: bool = True) -> None:
        #: Whether the heard position comes from mark echoes (else from the playout estimate).
        self.marks = marks
        # estimate mode: (start, end, bytes) of each entry of ``_marks``, in step with it, and
        # when the audio sent so far will have played (the carrier's queue runs dry)
        self._times: list[tuple[float, float, int]] = []
        self._until = -math.inf
        self._seq = 0
        # (seq, item, bytes of the item sent up to this mark), oldest first; a list, not a deque:
        # it stays short, and an empty deque costs 600 bytes per call
        self._marks: list[tuple[int, _Item, int]] = []
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
        """The number of the last mark sent (0: none yet): what :meth:`heard_through` takes."""
        return self._seq

    def heard_through(self, mark: int) -> bool:
        """The caller has heard all the audio sent up to mark number ``mark`` (a barge-in's
        ``clear`` counts as heard: nothing of it is left to play). Without marks: as of the last
        :meth:`elapse` (or :meth:`sent`, :meth:`interrupt`)."""
        return not self._marks or self._marks[0][0] > mark

    def finishes_at(self, mark: int) -> float:
        """Without marks: when (the call's clock, seconds) the audio sent up to mark number
        ``mark`` will have played, by the playout estimate; ``-inf`` if it has already (as of the
        last :meth:`elapse`). With marks: ``inf``, only its echo can tell."""
        if self.marks:
            return math.inf
        finished = -math.inf
        for (seq, _, _), (_, end, _) in zip(self._marks, self._times, strict=True):
            if seq > mark:
                break
            finished = end
        return finished

    def elapse(self, now: float) -> bool:
        """Without marks: move the heard position to what the playout estimate says has played
        by ``now`` (the call's clock, seconds; within a chunk, in proportion). Returns True if it
        moved. With marks: does nothing and returns False (only echoes move it)."""
        marks = self._marks
        if self.marks or not marks:
            return False
        times = self._times
        done = 0
        while done < len(marks) and times[done][1] <= now + _SLACK:
            _, item, upto = marks[done]
            item.heard = upto
            done += 1
        if done:
            del marks[:done]
            del times[:done]
        if marks:
            start, _, nbytes = times[0]
            if start < now:  # the first chunk still queued is playing: part of it is heard
                _, item, upto = marks[0]
                heard = upto - nbytes + min(nbytes, round((now - start) * _BYTES_PER_SECOND))
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

    def sent(
        self,
        nbytes: int,
        item_id: str | None,
        response_id: str | None,
        session: object,
        now: float = 0.0,
    ) -> str:
        """Record ``nbytes`` of agent audio of ``item_id`` (of ``session``) sent; returns the name
        of the mark to send after it. Without marks, ``now`` (the call's clock, seconds) is when
        it was sent: it plays from then, or when the audio before it ends."""
        if not self.marks:
            self.elapse(now)
            start = now if now > self._until else self._until
            self._until = start + nbytes / _BYTES_PER_SECOND
            self._times.append((start, self._until, nbytes))
        item = self._last
        if item is None or item.item_id != item_id or item.session is not session:
            item = self._item(session, item_id, response_id)
        item.sent += nbytes
        self._seq += 1
        marks = self._marks
        marks.append((self._seq, item, item.sent))
        if len(marks) > MAX_PENDING_MARKS:  # a carrier that does not echo: assume it played
            _, oldest, upto = marks.pop(0)
            oldest.heard = upto
            if self._times:
                self._times.pop(0)
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

    def played(self, name: str) -> bool:
        """The carrier echoed mark ``name``. Returns True if it means audio was heard.

        Marks that are not ours (or never sent), voided by a barge-in (the ``clear`` settled
        them), or echoed twice return False and change nothing; so does any echo without marks
        (``marks`` false: the estimate is all there is).
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
        marks = self._marks
        played = 0
        while played < len(marks) and marks[played][0] <= seq:
            _, item, upto = marks[played]
            item.heard = upto
            played += 1
        if not played:
            return False
        del marks[:played]
        return True

    def interrupt(self, session: object, now: float | None = None) -> list[Truncation] | None:
        """The caller barged in (at ``now``, the call's clock: without marks, the heard position
        is first moved there with :meth:`elapse`).

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
        if now is not None:
            self.elapse(now)
        if self._response is not None:
            self._cut(self._cut_responses, self._response)
        if not self._marks:
            return None
        queued = dict.fromkeys(item for _, item, _ in self._marks)  # in order, each once
        truncations = []
        for item in queued:
            if item.item_id is not None:
                self._cut(self._cut_items, (item.session, item.item_id))
            if item.response_id is not None:
                self._cut(self._cut_responses, (item.session, item.response_id))
            if item.item_id is not None and item.session is session:
                truncations.append(Truncation(item.item_id, item.heard // BYTES_PER_MS))
        self._marks.clear()  # settled: an echo of them (Twilio's, after the clear) finds nothing
        self._times.clear()
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
