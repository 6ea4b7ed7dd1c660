"""Checks of a carrier's JSON frames, one set for every carrier codec (Twilio, Telnyx, Plivo, Vonage).

A carrier's control frames are JSON objects with an ``event`` name; their fields are checked here
and every failure raises :class:`~voxbridge.errors.RemoteProtocolError` with a message that names
the field by its path in the frame (``start.mediaFormat.sampleRate``) and shows what was there,
briefly (:func:`show`): the same words whichever carrier sent it. :func:`parse_frame` reads a whole
frame as far as every event shares (size, UTF-8, JSON, an object, its ``event``); the field
functions then read what each event carries. Where carriers differ, a keyword says how: Telnyx
sends ``null`` for a field it leaves out (``nullable=True``).

Counters (sequence numbers, chunk numbers, timestamps, sample rates) come as JSON integers or as
strings of digits, depending on the carrier and the field (Twilio and Telnyx send digit strings,
Plivo numbers): :func:`counter` reads both, within a signed 64-bit range.

Sans-IO: pure functions over parsed JSON; no socket, no clock, no logging.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import orjson

from ..audio import b64_decode
from ..errors import RemoteProtocolError
from .base import Frame

__all__ = [
    "DTMF_DIGITS",
    "MAX_COUNTER",
    "MISSING",
    "SAFETY_NET",
    "audio_payload",
    "counter",
    "digit",
    "json_string",
    "object_field",
    "optional_counter",
    "parse_frame",
    "same_stream",
    "show",
    "string_field",
    "unexpected",
]

#: What ``dict.get`` returns for a field that is absent (``None`` is JSON ``null``).
MISSING: Final = object()
#: The largest counter accepted: a signed 64-bit integer.
MAX_COUNTER: Final = 2**63 - 1
#: Every value a DTMF digit may take (RFC 4733's events 0-15): ``0-9 * # A-D``.
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
#: What a decoder bug may raise; a codec turns these into a protocol error (:func:`unexpected`)
#: so that nothing but :class:`~voxbridge.errors.RemoteProtocolError` escapes its ``decode``.
SAFETY_NET: Final = (
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    ValueError,
    OverflowError,
    RecursionError,
)

_TYPE_NAMES: Final[Mapping[type, str]] = {dict: "an object", list: "an array"}
_SHOWN: Final = 60  # characters of a value quoted in a message


def show(value: object) -> str:
    """A JSON value for an error message, briefly and without recursing into it: a string
    quoted (cut to 60 characters), a scalar as JSON, an object or array by its kind."""
    if isinstance(value, str):
        return repr(value[:_SHOWN] + "..." if len(value) > _SHOWN else value)
    if value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
        return text[:_SHOWN] + "..." if len(text) > _SHOWN else text
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def parse_frame(
    frame: Frame, max_frame: int, *, foreign: type[Exception] = RemoteProtocolError
) -> tuple[str, dict[str, Any]]:
    """A text frame's ``event`` name and its JSON object.

    Args:
        frame: the frame (``bytes`` are read as UTF-8).
        max_frame: the longest frame accepted (characters for ``str``, bytes for ``bytes``),
            checked before anything is parsed.
        foreign: what a ``frame`` that is neither ``str`` nor ``bytes`` raises: a bug of the
            caller for Twilio's and Telnyx's codecs (``TypeError``), a bad frame for the others.

    Raises:
        RemoteProtocolError: too long, not UTF-8, not JSON (orjson: no NaN or infinities, no
            lone surrogates, integers within 64 bits, nesting within 1024), not an object, no
            ``event`` or not a string.
    """
    if not isinstance(frame, str | bytes):
        raise foreign(f"a frame must be text or bytes, not {type(frame).__name__}")
    if len(frame) > max_frame:
        raise RemoteProtocolError(f"frame of {len(frame)} exceeds MAX_FRAME={max_frame}")
    try:
        # orjson: 3-7x faster than the json module on these frames (benchmarks/jsonparse.py)
        # and strict where it matters.
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"malformed JSON: {_why(frame, exc)}") from exc
    if type(message) is not dict:
        raise RemoteProtocolError(f"frame must be a JSON object, got {show(message)}")
    event = message.get("event", MISSING)
    if type(event) is not str:
        if event is MISSING:
            raise RemoteProtocolError("frame has no 'event' field")
        raise RemoteProtocolError(f"event must be a string, got {show(event)}")
    return event, message


def _why(frame: str | bytes, exc: orjson.JSONDecodeError) -> str:
    """Why a frame is not JSON: its bytes are not UTF-8 (said so), or orjson's reason."""
    if isinstance(frame, bytes):
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"frame is not valid UTF-8: {bad.reason}"
    return str(exc)


def unexpected(event: str, exc: BaseException) -> RemoteProtocolError:
    """The protocol error a decoder bug (one of :data:`SAFETY_NET`) becomes, so that it never
    escapes a codec; the exception's type is named, its text (which may quote the frame) not."""
    return RemoteProtocolError(
        f"unexpected error decoding {event[:40]} frame: {type(exc).__name__}"
    )


def object_field(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    """The object at ``obj[key]``.

    Raises:
        RemoteProtocolError: absent (``<path> is missing``) or not an object.
    """
    value = obj.get(key, MISSING)
    if value is MISSING:
        raise RemoteProtocolError(f"{path} is missing")
    if type(value) is not dict:
        raise RemoteProtocolError(f"{path} must be an object, got {show(value)}")
    return value


def string_field(
    obj: Mapping[str, Any],
    key: str,
    path: str,
    default: str | None = None,
    *,
    nullable: bool = False,
) -> str:
    """The string at ``obj[key]``; ``default`` when it is absent (or, with ``nullable``,
    ``null``) and a default is given.

    Raises:
        RemoteProtocolError: absent without a default, or not a string (``null`` included, unless
            ``nullable`` with a default).
    """
    value = obj.get(key, MISSING)
    if type(value) is str:
        return value
    if value is MISSING or (nullable and value is None and default is not None):
        if default is None:
            raise RemoteProtocolError(f"{path} is missing")
        return default
    raise RemoteProtocolError(f"{path} must be a string, got {show(value)}")


def audio_payload(body: Mapping[str, Any], path: str) -> tuple[str, bytes]:
    """The base64 audio at ``body["payload"]`` (``path`` names it: ``media.payload``): the text as
    sent (to forward unchanged) and its bytes.

    Raises:
        RemoteProtocolError: absent, not a string, empty, or not strict base64
            (:func:`voxbridge.audio.b64_decode`).
    """
    payload = string_field(body, "payload", path)
    if not payload:
        raise RemoteProtocolError("empty media payload")
    try:
        audio = b64_decode(payload)
    except ValueError as exc:
        raise RemoteProtocolError(f"{path} is {exc}") from exc
    return payload, audio


def counter(value: object, path: str) -> int:
    """A non-negative integer sent as a JSON integer or a string of digits (at most 19 ASCII
    digits), within :data:`MAX_COUNTER`.

    Raises:
        RemoteProtocolError: :data:`MISSING` (``<path> is missing``), or anything else.
    """
    if type(value) is str:
        if 0 < len(value) <= 19 and value.isascii() and value.isdigit():
            number = int(value)
            if number <= MAX_COUNTER:
                return number
    elif type(value) is int and 0 <= value <= MAX_COUNTER:
        return value
    elif value is MISSING:
        raise RemoteProtocolError(f"{path} is missing")
    raise RemoteProtocolError(f"{path} must be a non-negative integer, got {show(value)}")


def optional_counter(
    obj: Mapping[str, Any], key: str, path: str, *, nullable: bool = False
) -> int | None:
    """:func:`counter` of ``obj[key]``, ``None`` when it is absent (or, with ``nullable``,
    ``null``).

    Raises:
        RemoteProtocolError: present and not a counter.
    """
    value = obj.get(key, MISSING)
    if value is MISSING or (nullable and value is None):
        return None
    return counter(value, path)


def digit(value: object, path: str) -> str:
    """A DTMF digit (one of :data:`DTMF_DIGITS`).

    Raises:
        RemoteProtocolError: anything else (absent, another type, another text).
    """
    if type(value) is not str or value not in DTMF_DIGITS:
        raise RemoteProtocolError(f"{path} must be one of 0-9 * # A-D, got {show(value)}")
    return value


def same_stream(message: Mapping[str, Any], key: str, stream: str, event: str) -> None:
    """Check that a frame's stream id (``message[key]``), when it carries one, is ``stream``.

    Raises:
        RemoteProtocolError: another stream's id (``<event>.<key> ... does not match``).
    """
    given = message.get(key, MISSING)
    if given is not MISSING and given != stream:
        raise RemoteProtocolError(
            f"{event}.{key} {show(given)} does not match the stream {stream!r}"
        )


def json_string(text: str) -> str:
    """``text`` as a JSON string literal (quoted, escaped): a name from a provider cannot change
    the JSON structure of a frame it is put in. Letters and digits only skip the encoder (the
    names voxbridge makes, once per outbound audio chunk)."""
    return f'"{text}"' if text.isascii() and text.isalnum() else json.dumps(text)
