"""The opt-in upstream batching window (``--upstream-batch-ms``): caller audio, gathered.

Twilio sends a media message every 20 ms; relayed one for one, each costs a WebSocket message to the
provider. With a window of W ms the call gathers the caller's frames and sends them as one
``input_audio_buffer.append`` (or one binary Ultravox message) when either

* W ms of *audio* have been gathered (with Twilio's real-time stream, the usual case: the first
  frame of a batch waited W - 20 ms), or
* W ms of *time* have passed since the first frame of the batch (a caller that paused must not
  leave audio stranded): :attr:`AudioBatch.flush_at` is the deadline the call waits under, or
* the call is about to stop.

So no frame waits longer than W. That is the cost, and it is added to the provider's view of the
caller's speech (voice-activity detection ends a turn up to W later). Off by default.

Pure state: no clock, no I/O; the call passes the time in.
"""

from __future__ import annotations

import math

from ..audio import BYTES_PER_MS, b64_join, b64_size

__all__ = ["AudioBatch"]


class AudioBatch:
    """Caller audio payloads (base64 mu-law) waiting to go upstream together."""

    __slots__ = ("_payloads", "_size", "flush_at", "limit", "window")

    def __init__(self, window_ms: float) -> None:
        if not window_ms > 0:
            raise ValueError(f"a batching window must be positive, got {window_ms!r} ms")
        self.window = window_ms / 1000
        self.limit = max(1, math.ceil(window_ms * BYTES_PER_MS))  # bytes of audio in a window
        self._payloads: list[str] = []
        self._size = 0
        self.flush_at = math.inf  # when the oldest frame gathered has waited a whole window

    def __len__(self) -> int:
        """Frames gathered."""
        return len(self._payloads)

    def add(self, payload: str, now: float) -> bool:
        """Gather one frame received at ``now``. Returns True when the batch must go now."""
        if not self._payloads:
            self.flush_at = now + self.window
        self._payloads.append(payload)
        self._size += b64_size(payload)
        return self._size >= self.limit or now >= self.flush_at

    def take(self) -> tuple[str, int]:
        """The gathered audio as one base64 payload, and how many frames it holds; empties."""
        payload, frames = b64_join(self._payloads), len(self._payloads)
        self.clear()
        return payload, frames

    def clear(self) -> int:
        """Forget what was gathered; returns how many frames that was."""
        frames = len(self._payloads)
        self._payloads = []
        self._size = 0
        self.flush_at = math.inf
        return frames
