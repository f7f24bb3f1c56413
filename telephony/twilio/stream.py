"""Sans-IO state machine for one Twilio Media Streams WebSocket.

Feed it every message the socket delivers (``receive``) or already-parsed events
(``handle``); it returns the validated event or raises :class:`ProtocolError`. It owns no
socket and no clock, so every ordering rule is unit-testable.

States: ``AWAITING_START`` -> ``STREAMING`` -> ``STOPPED``, and ``FAILED`` from anywhere
on a fatal error. Order enforced: ``connected`` is optional and may come once, before
``start``; ``start`` comes once, before any ``media``/``dtmf``/``mark``/``stop``; every event
after ``start`` must carry the started ``streamSid``; nothing may follow ``stop``.

Error policy (``ProtocolError.fatal``):

* **Non-fatal**, log and ignore the message: an unknown ``event`` name. Twilio may add
  events, and one we do not understand harms nothing.
* **Fatal**, close the socket with 1008 and ``ProtocolError.close_reason``: a binary frame,
  a message over ``max_message_bytes`` (checked before parsing, so a huge message is never
  decoded), invalid JSON, a JSON value that is not an object, a missing ``event``, missing
  or mistyped fields, a payload that is not base64, events out of order (media before
  start, a second start, anything after stop), a ``streamSid`` other than the started one,
  and a media format other than 8 kHz mono μ-law (we could only decode it as noise).
  Each of these means the peer is not Twilio, or is broken, and the audio can no longer
  be trusted. After a fatal error the session is ``FAILED`` and rejects everything.
"""

from __future__ import annotations

import enum
from typing import Final

from telephony.twilio.messages import (
    MULAW_8K,
    Connected,
    InboundEvent,
    ProtocolError,
    Start,
    Stop,
    parse_message,
)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "StreamSession", "StreamState"]

#: A Twilio media message is ~300 bytes and a start message a few kB with custom
#: parameters; 64 KiB leaves ample room and still bounds what we will parse.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024

# UTF-8 needs at most 4 bytes a character: below this many characters a str cannot be
# over the limit, so the common case never pays for an encode.
_MAX_UTF8_BYTES_PER_CHAR: Final = 4


class StreamState(enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"
    FAILED = "failed"


class StreamSession:
    """Protocol state of one Media Streams connection."""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self._state = StreamState.AWAITING_START
        self._connected = False
        self._start: Start | None = None
        self._error: ProtocolError | None = None

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def start(self) -> Start | None:
        """The ``start`` event once received: SIDs, tracks, custom parameters."""
        return self._start

    @property
    def stream_sid(self) -> str | None:
        return self._start.stream_sid if self._start else None

    @property
    def error(self) -> ProtocolError | None:
        """The fatal error that failed the session, if any."""
        return self._error

    def receive(self, data: str | bytes) -> InboundEvent:
        """Check size, parse and apply one raw WebSocket message."""
        self._ensure_usable()
        try:
            if isinstance(data, str):
                self._check_size(data)
            event = parse_message(data)
        except ProtocolError as err:
            self._fail(err)
            raise
        return self.handle(event)

    def handle(self, event: InboundEvent) -> InboundEvent:
        """Apply one parsed event; returns it unchanged once it is known to be in order."""
        self._ensure_usable()
        try:
            self._apply(event)
        except ProtocolError as err:
            self._fail(err)
            raise
        return event

    def _ensure_usable(self) -> None:
        if self._error is not None:
            raise ProtocolError(
                "session_failed", f"stream already failed ({self._error.code}); no more messages accepted"
            )

    def _fail(self, err: ProtocolError) -> None:
        if err.fatal:
            self._state = StreamState.FAILED
            self._error = err

    def _check_size(self, text: str) -> None:
        limit = self.max_message_bytes
        if len(text) > limit:
            # Every character is at least one byte: too large without encoding anything.
            raise ProtocolError("message_too_large", f"message of {len(text)}+ bytes exceeds {limit} bytes")
        if len(text) * _MAX_UTF8_BYTES_PER_CHAR > limit and len(text.encode("utf-8")) > limit:
            size = len(text.encode("utf-8"))
            raise ProtocolError("message_too_large", f"message of {size} bytes exceeds {limit} bytes")

    def _apply(self, event: InboundEvent) -> None:
        if self._state is StreamState.STOPPED:
            raise ProtocolError("after_stop", f"'{_event_name(event)}' after 'stop'")
        if isinstance(event, Connected):
            self._apply_connected()
        elif isinstance(event, Start):
            self._apply_start(event)
        else:
            self._check_started(event)
            if isinstance(event, Stop):
                self._state = StreamState.STOPPED

    def _apply_connected(self) -> None:
        if self._connected or self._state is not StreamState.AWAITING_START:
            raise ProtocolError("unexpected_connected", "'connected' must come once, before 'start'")
        self._connected = True

    def _apply_start(self, start: Start) -> None:
        if self._start is not None:
            raise ProtocolError("duplicate_start", f"second 'start' for stream {self._start.stream_sid!r}")
        if start.media_format != MULAW_8K:
            fmt = start.media_format
            got = f"{fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}"
            raise ProtocolError(
                "unsupported_media_format", f"{got}; only audio/x-mulaw 8000 Hz x1 is handled"
            )
        self._start = start
        self._state = StreamState.STREAMING

    def _check_started(self, event: InboundEvent) -> None:
        if self._start is None:
            raise ProtocolError("event_before_start", f"'{_event_name(event)}' before 'start'")
        sid = getattr(event, "stream_sid", None)
        if sid != self._start.stream_sid:
            reason = (
                f"'{_event_name(event)}' for streamSid {sid!r}, but the stream is {self._start.stream_sid!r}"
            )
            raise ProtocolError("wrong_stream_sid", reason)


def _event_name(event: InboundEvent) -> str:
    return type(event).__name__.lower()
