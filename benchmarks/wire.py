"""Just enough RFC 6455 and Twilio/OpenAI/Gemini wire format for a cheap load generator and fake.

The load side must never be the bottleneck, so it does not use a WebSocket library: frames are
built from precomputed byte strings, parsed with a tiny incremental reader, and audio payloads
carry a timestamp so latency needs no per-frame bookkeeping.

* **Timestamps in the audio.** The first 6 bytes of every 160-byte mu-law payload are
  ``time.monotonic_ns() // 1000`` (microseconds, 48 bits) at the moment the frame was built. On
  Linux ``CLOCK_MONOTONIC`` is one clock for every process, so the receiver -- the generator for
  caller audio echoed back, the upstream fake for the last frame before a stall -- subtracts it
  from its own clock. Six bytes are exactly 8 base64 characters, so the rest of the payload's
  base64 text is a constant.
* **Client frames** are masked with the all-zero key: legal (the server still runs its unmasking
  code; neither wsproto nor ``websockets`` has a fast path for it), and it lets a frame be plain
  concatenation of precomputed bytes.
* Messages are never fragmented by the peers measured here; continuation frames are still handled.
* **Gemini Live** audio is resampled on the way (see the Gemini section below): latency is read
  from the audio's position (echo) or from a stamp coded to survive resampling (agent).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import struct
import time

__all__ = [
    "AUDIO_REST_B64",
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "TwilioFrames",
    "accept_key",
    "client_frame",
    "close_payload",
    "decode_pcm_stamp",
    "decode_stamp",
    "gemini_audio_frame",
    "handshake_request",
    "handshake_response",
    "now_us",
    "pcm_stamp",
    "server_frame",
    "stamp",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_B64 = 216  # its base64 length
FRAME_SECONDS = 0.02
_STAMP_MASK = (1 << 48) - 1
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ZERO_MASK = b"\x00\x00\x00\x00"

# mu-law "silence" with a little texture; any bytes work, the bridges never decode audio.
_AUDIO_REST = bytes((0xFF - (i % 7)) for i in range(FRAME_BYTES - 6))
AUDIO_REST_B64 = base64.b64encode(_AUDIO_REST)
"""Base64 of the last 154 bytes of every payload (the first 6 bytes are the timestamp)."""


def now_us() -> int:
    """``CLOCK_MONOTONIC`` in microseconds: the clock every process on this machine shares."""
    return time.monotonic_ns() // 1000


def stamp(us: int | None = None) -> bytes:
    """The 8 base64 characters that start a payload: ``us`` (default: now) modulo 2**48."""
    value = (now_us() if us is None else us) & _STAMP_MASK
    return binascii.b2a_base64(value.to_bytes(6, "big"), newline=False)


def decode_stamp(b64: bytes | str) -> int:
    """The microsecond timestamp in the first 8 base64 characters of a payload."""
    return int.from_bytes(binascii.a2b_base64(b64[:8]), "big")


def frame_stamps(b64: bytes) -> list[int]:
    """The timestamps of every 160-byte frame in a payload that carries several merged frames."""
    raw = binascii.a2b_base64(b64)
    return [int.from_bytes(raw[k : k + 6], "big") for k in range(0, len(raw) - 5, FRAME_BYTES)]


def frame_count(b64: bytes) -> int:
    """How many 20 ms frames a base64 payload carries (at least 1)."""
    return max(1, round(len(b64) * 3 / 4 / FRAME_BYTES))


def last_stamp(b64: bytes) -> bytes:
    """The 8 base64 characters of the last frame's timestamp in a payload."""
    if len(b64) <= FRAME_B64:
        return b64[:8]
    raw = binascii.a2b_base64(b64)
    k = (len(raw) - 1) // FRAME_BYTES * FRAME_BYTES
    return binascii.b2a_base64(raw[k : k + 6], newline=False)


def elapsed_us(stamp_us: int, now: int | None = None) -> int:
    """Microseconds since ``stamp_us`` (wrap-around safe for the 48-bit field)."""
    return ((now_us() if now is None else now) - stamp_us) & _STAMP_MASK


# --------------------------------------------------------------------------------- framing


def _header(opcode: int, length: int, masked: bool) -> bytes:
    first = 0x80 | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    return head + _ZERO_MASK if masked else head


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A client-to-server frame (masked, zero key)."""
    return _header(opcode, len(payload), True) + payload


def server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A server-to-client frame (unmasked)."""
    return _header(opcode, len(payload), False) + payload


def client_header(length: int) -> bytes:
    """The header of a masked text frame of ``length`` bytes (for callers that concatenate)."""
    return _header(OP_TEXT, length, True)


def server_header(length: int) -> bytes:
    """The header of an unmasked text frame of ``length`` bytes."""
    return _header(OP_TEXT, length, False)


def close_payload(code: int = 1000, reason: str = "") -> bytes:
    """The payload of a close frame."""
    return struct.pack("!H", code) + reason.encode()[:120]


def _unmask(data: bytes, mask: bytes) -> bytes:
    if mask == _ZERO_MASK:
        return data
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Incremental frame parser: :meth:`feed` bytes, get complete ``(opcode, payload)`` messages.

    Masked frames are unmasked; continuation frames are joined. Control frames come out as they
    arrive. ``max_size`` bounds one message (a misbehaving peer raises ``ValueError``).
    """

    __slots__ = ("_buf", "_frag", "_frag_op", "max_size")

    def __init__(self, max_size: int = 1 << 20) -> None:
        self._buf = b""
        self._frag: list[bytes] = []
        self._frag_op = OP_TEXT
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            at = pos + 2
            if length == 126:
                if end - at < 2:
                    break
                length = (buf[at] << 8) | buf[at + 1]
                at += 2
            elif length == 127:
                if end - at < 8:
                    break
                length = int.from_bytes(buf[at : at + 8], "big")
                at += 8
            if length > self.max_size:
                raise ValueError(f"frame of {length} bytes")
            if b1 & 0x80:
                if end - at < 4 + length:
                    break
                payload = _unmask(buf[at + 4 : at + 4 + length], buf[at : at + 4])
                at += 4 + length
            else:
                if end - at < length:
                    break
                payload = buf[at : at + length]
                at += length
            pos = at
            opcode = b0 & 0x0F
            if opcode >= OP_CLOSE or (b0 & 0x80 and opcode != OP_CONT and not self._frag):
                out.append((opcode, payload))
            else:
                if opcode != OP_CONT:
                    self._frag_op = opcode
                self._frag.append(payload)
                if b0 & 0x80:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag = []
        self._buf = buf[pos:] if pos < end else b""
        return out


# ------------------------------------------------------------------------------- handshake


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def handshake_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """An HTTP/1.1 upgrade request (no extensions offered) and the accept value to expect."""
    key = base64.b64encode(secrets.token_bytes(16))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept_key(key)


def handshake_response(request: bytes) -> bytes | None:
    """The 101 response to a complete upgrade request, or ``None`` if it is not one."""
    key = None
    for line in request.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if key is None:
        return None
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )


# ------------------------------------------------------------------------------ Twilio side


class TwilioFrames:
    """Precomputed Twilio frames for one generator process.

    A media frame is ``heads[i] + stamp() + tail``: ``heads[i]`` holds the WebSocket header and the
    JSON up to the payload for frame index ``i`` (sequence number, chunk and timestamp differ per
    index), ``tail`` the rest of the payload and the call's stream SID -- the exact byte layout of
    :func:`voxbridge.carriers.twilio_wire.encode_inbound_media`.
    """

    SID_LEN = 34  # "MZ" + 32 hex digits

    def __init__(self, count: int) -> None:
        self.count = count
        self.heads: list[bytes] = []
        for i in range(count):
            # sequence numbers: connected has none, start is 1, media from 2 (as Twilio).
            prefix = (
                f'{{"event":"media","sequenceNumber":"{i + 2}","media":{{"track":"inbound",'
                f'"chunk":"{i + 1}","timestamp":"{i * 20}","payload":"'
            ).encode()
            length = (
                len(prefix) + 8 + len(AUDIO_REST_B64) + len('"},"streamSid":"') + self.SID_LEN + 2
            )
            self.heads.append(client_header(length) + prefix)

    @staticmethod
    def new_sids() -> tuple[str, str, str]:
        """Fresh (stream SID, call SID, account SID)."""
        return "MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16), "AC" + "0" * 32

    @staticmethod
    def tail(stream_sid: str) -> bytes:
        """The bytes after the timestamp for every media frame of one call."""
        return AUDIO_REST_B64 + b'"},"streamSid":"' + stream_sid.encode() + b'"}'

    @staticmethod
    def opening(stream_sid: str, call_sid: str, account_sid: str) -> bytes:
        """``connected`` and ``start`` as two client frames, in Twilio's shape."""
        connected = b'{"event":"connected","protocol":"Call","version":"1.0.0"}'
        start = json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": account_sid,
                    "streamSid": stream_sid,
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {},
                },
                "streamSid": stream_sid,
            },
            separators=(",", ":"),
        ).encode()
        return client_frame(connected) + client_frame(start)

    @staticmethod
    def stop(stream_sid: str, call_sid: str, account_sid: str, seq: int) -> bytes:
        """The ``stop`` frame, as a client frame."""
        body = json.dumps(
            {
                "event": "stop",
                "sequenceNumber": str(seq),
                "stop": {"accountSid": account_sid, "callSid": call_sid},
                "streamSid": stream_sid,
            },
            separators=(",", ":"),
        ).encode()
        return client_frame(body)

    @staticmethod
    def mark_echo(stream_sid: str, name: bytes, seq: int) -> bytes:
        """Twilio's echo of a ``mark`` the bridge sent."""
        head = f'{{"event":"mark","sequenceNumber":"{seq}","streamSid":"{stream_sid}","mark":'
        body = head.encode() + b'{"name":' + name + b"}}"
        return client_frame(body)


# ------------------------------------------------------------------------------ OpenAI side

DELTA_PREFIX = (
    b'{"type":"response.output_audio.delta","event_id":"event_0","response_id":"resp_1",'
    b'"item_id":"item_1","output_index":0,"content_index":0,"delta":"'
)
DELTA_SUFFIX = b'"}'
SESSION_CREATED = server_frame(b'{"type":"session.created","session":{"type":"realtime"}}')
SESSION_UPDATED = server_frame(b'{"type":"session.updated","session":{"type":"realtime"}}')


def delta_frame(audio_b64: bytes) -> bytes:
    """A ``response.output_audio.delta`` server frame carrying ``audio_b64`` verbatim."""
    body = DELTA_PREFIX + audio_b64 + DELTA_SUFFIX
    return server_header(len(body)) + body


_DELTA_LEN = len(DELTA_PREFIX) + 8 + len(AUDIO_REST_B64) + len(DELTA_SUFFIX)
_DELTA_HEAD = server_header(_DELTA_LEN) + DELTA_PREFIX
_DELTA_TAIL = AUDIO_REST_B64 + DELTA_SUFFIX


def fresh_delta_frame(stamp8: bytes) -> bytes:
    """A delta frame with a new 20 ms payload stamped ``stamp8`` (the agent's own audio)."""
    return _DELTA_HEAD + stamp8 + _DELTA_TAIL


# ------------------------------------------------------------------------------ Gemini side
#
# Gemini Live carries PCM16LE at 16 kHz up and 24 kHz down, so voxbridge resamples both ways and
# the 6-byte timestamps of the mu-law frames cannot survive the trip. Two replacements:
#
# * **Position** (echo): every resampler keeps its output aligned in time with its input (no
#   leading zeros; it only holds back a tail until more input comes), so the n-th mu-law byte a
#   caller receives is the echo of the n-th byte it sent. A caller frame is back when the byte
#   count reaches its end; its latency is that moment minus the frame's send time, which includes
#   the resamplers' hold-back.
# * **A stamp that survives resampling** (agent): the first 20 ms of each burst carry a 32-bit
#   microsecond timestamp and an 8-bit check as 40 cells of +-A, one bit per 0.5 ms cell (12
#   samples at 24 kHz, 4 at 8 kHz) -- a 1 kHz signal at most, far inside the resamplers' passband.
#   After 24 -> 8 kHz and mu-law the sign bit of a sample near each cell's centre is the bit.

GEMINI_FRAME_SAMPLES = 480  # 20 ms at 24 kHz
PCM_STAMP_BITS = 40  # 32 bits of microseconds, 8 check bits
PCM_STAMP_BYTES = 160  # the stamp's span in mu-law bytes at 8 kHz: the burst's first frame
_CELL_24K = GEMINI_FRAME_SAMPLES // PCM_STAMP_BITS  # 12 samples
_CELL_8K = PCM_STAMP_BYTES // PCM_STAMP_BITS  # 4 samples
# The sample read in each 8 kHz cell: voxbridge's 24 -> 8 kHz soxr resampler (HQ, variable rate)
# delays a cell edge by about 2.5 samples; every offset from 2 to 5 decoded 500 random stamps when
# this was written, and 3 is near the middle (benchmarks.codec checks it through GeminiCodec).
_READ_AT = 3
_LEVEL = 12000
_CELL_HI = struct.pack(f"<{_CELL_24K}h", *([_LEVEL] * _CELL_24K))
_CELL_LO = struct.pack(f"<{_CELL_24K}h", *([-_LEVEL] * _CELL_24K))

GEMINI_SETUP_COMPLETE = server_frame(b'{"setupComplete":{}}')
GEMINI_AUDIO_PREFIX = (
    b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":'
    b'{"mimeType":"audio/pcm;rate=24000","data":"'
)
GEMINI_AUDIO_SUFFIX = b'"}}]}}}'
GEMINI_TURN_COMPLETE = server_frame(
    b'{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":50,'
    b'"responseTokenCount":25,"totalTokenCount":75,"promptTokensDetails":[{"modality":"AUDIO",'
    b'"tokenCount":50}],"responseTokensDetails":[{"modality":"AUDIO","tokenCount":25}]}}'
)
GEMINI_RESUMPTION_UPDATE = server_frame(
    b'{"sessionResumptionUpdate":{"newHandle":"bench-handle","resumable":true}}'
)


def gemini_audio_frame(pcm: bytes) -> bytes:
    """A ``serverContent.modelTurn`` server frame carrying ``pcm`` (PCM16LE, 24 kHz)."""
    body = GEMINI_AUDIO_PREFIX + binascii.b2a_base64(pcm, newline=False) + GEMINI_AUDIO_SUFFIX
    return server_header(len(body)) + body


def _check(value: int) -> int:
    b = value.to_bytes(4, "big")
    return (b[0] ^ b[1] ^ b[2] ^ b[3] ^ 0xA5) & 0xFF


def pcm_stamp(us: int | None = None) -> bytes:
    """20 ms of PCM16LE at 24 kHz carrying ``us`` (default: now) modulo 2**32 and a check byte."""
    value = (now_us() if us is None else us) & 0xFFFFFFFF
    word = value << 8 | _check(value)
    return b"".join(
        _CELL_HI if word >> (PCM_STAMP_BITS - 1 - i) & 1 else _CELL_LO
        for i in range(PCM_STAMP_BITS)
    )


def decode_pcm_stamp(ulaw: bytes) -> int | None:
    """The 32-bit microsecond stamp in the first 160 mu-law bytes of a burst (``None``: the check
    failed). G.711 mu-law stores the sign inverted: bit 7 set is a positive sample."""
    word = 0
    for i in range(PCM_STAMP_BITS):
        word = word << 1 | ulaw[i * _CELL_8K + _READ_AT] >> 7
    value = word >> 8
    return value if word & 0xFF == _check(value) else None


def elapsed32_us(stamp32: int, now: int) -> int:
    """Microseconds from a 32-bit stamp to ``now`` (wrap-around safe: 71 minutes)."""
    return (now - stamp32) & 0xFFFFFFFF
