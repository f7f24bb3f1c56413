"""A small Twilio Media Streams client: plays the part of Twilio (and the caller behind it).

Used by the end-to-end tests and by the benchmarks (`bench/latency.py`, `bench/footprint.py`). It
behaves like a real phone leg:

* It sends `connected` and `start`, then one 160-byte μ-law `media` frame every 20 ms for as long as
  the call lasts, paced on an absolute clock (frame *n* is due at t0 + n x 20 ms, so there is no
  drift). Caller speech is queued with `play()`; between utterances the line carries silence, as a
  real line does, so the server's VAD sees a quiet caller rather than a dead socket.
* It records every `media` frame the server sends with its arrival time (`time.perf_counter()`), and
  every `mark` and `clear`.
* Like Twilio, it echoes a `mark` back once the audio sent before it has finished *playing* (a
  playback clock advances by each payload's duration), and on `clear` it discards the unplayed audio
  and echoes the marks still pending at once (Twilio's documented behaviour: "you also receive an
  incoming mark event message if the buffer was cleared using the clear event message").

All timestamps are `time.perf_counter()` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import time
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from testkit.audio import FRAME_SAMPLES, SAMPLE_RATE, Speech, frame_rms, ulaw_decode, ulaw_frames
from testkit.twilio_replies import (
    FRAME_S,
    AudioLike,
    CallEvent,
    Reply,
    ReplyTimeout,
    RxChunk,
    RxFrame,
    concat_pcm,
    to_ulaw,
)

__all__ = [
    "AudioLike",
    "CallEvent",
    "Reply",
    "ReplyTimeout",
    "RxChunk",
    "RxFrame",
    "TwilioCall",
    "concat_pcm",
    "to_ulaw",
]

SILENCE_FRAME = b"\xff" * FRAME_SAMPLES
# A frame is "sound" above this RMS (int16 scale, about -44 dBFS). μ-law idle noise is far below.
DEFAULT_SOUND_RMS = 200.0


class TwilioCall:
    """One simulated Twilio call. Use as `async with TwilioCall(url) as call:`."""

    def __init__(
        self,
        url: str,
        *,
        stream_sid: str | None = None,
        call_sid: str | None = None,
        account_sid: str = "AC" + "0" * 32,
        from_number: str = "+15550100001",
        to_number: str = "+15550100002",
        custom_parameters: dict[str, str] | None = None,
        echo_marks: bool = True,
        send_silence: bool = True,
        sound_rms: float = DEFAULT_SOUND_RMS,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.stream_sid = stream_sid or "MZ" + uuid.uuid4().hex
        self.call_sid = call_sid or "CA" + uuid.uuid4().hex
        self.account_sid = account_sid
        self.custom_parameters = {"From": from_number, "To": to_number, **(custom_parameters or {})}
        self.echo_marks = echo_marks
        self.send_silence = send_silence
        self.sound_rms = sound_rms
        self.open_timeout = open_timeout

        self.ws: ClientConnection | None = None
        self.started_at: float | None = None  # when `start` went out
        self.chunks: list[RxChunk] = []
        self.events: list[CallEvent] = []
        self.protocol_errors: list[str] = []  # malformed things the server sent
        self.frames_sent = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()

        self._seq = 0
        self._chunk = 0
        self._media_ts_ms = 0
        self._queue: list[bytes] = []  # frames waiting to be played
        self._play_waiters: list[tuple[int, asyncio.Future[float]]] = []  # (frame index, future)
        self._queued_total = 0
        self._sent_payload_frames = 0
        self._playback_end = 0.0
        self._pending_marks: list[tuple[float, str]] = []
        self._rx: list[RxFrame] = []  # received audio in 20 ms frames, in arrival order
        self._rx_at: list[float] = []  # their arrival times, for bisection
        self._rx_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> TwilioCall:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the WebSocket only (no `connected`/`start`): for protocol-abuse tests."""
        self.ws = await connect(
            self.url,
            open_timeout=self.open_timeout,
            close_timeout=5,
            max_size=4 * 1024 * 1024,
            proxy=None,
            compression=None,
            ping_interval=None,
        )
        self._tasks.append(asyncio.create_task(self._receive_loop(), name=f"rx-{self.stream_sid[:8]}"))

    async def connect(self) -> TwilioCall:
        """Open the socket, send `connected` and `start`, and start streaming the line."""
        await self.open()
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send_start()
        self._tasks.append(asyncio.create_task(self._send_loop(), name=f"tx-{self.stream_sid[:8]}"))
        if self.echo_marks:
            self._tasks.append(asyncio.create_task(self._mark_loop(), name=f"marks-{self.stream_sid[:8]}"))
        return self

    async def send_start(self) -> None:
        await self.send_json(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(self.custom_parameters),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )
        self.started_at = time.perf_counter()

    async def stop(self, *, close: bool = True) -> None:
        """Hang up as Twilio does: a `stop` message, then the socket closes."""
        await self._halt_sender()
        if not self._stopped and not self.closed.is_set():
            self._stopped = True
            with contextlib.suppress(ConnectionClosed):
                await self.send_json(
                    {
                        "event": "stop",
                        "sequenceNumber": self._next_seq(),
                        "streamSid": self.stream_sid,
                        "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                    }
                )
        if close:
            await self.close()

    async def drop(self) -> None:
        """A dropped line: the TCP connection dies with no `stop` and no close frame."""
        await self._halt_sender()
        if self.ws is not None:
            self.ws.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 5)
        await self._cancel_tasks()

    async def close(self) -> None:
        """Close the socket (code 1000) and end every task. Idempotent."""
        await self._halt_sender()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 5)
        await self._cancel_tasks()

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """Wait for the server to close the socket; returns (code, reason)."""
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code, self.close_reason

    async def _halt_sender(self) -> None:
        self._stopping = True
        for task in self._tasks:
            if task.get_name().startswith("tx-"):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 1)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for _index, fut in self._play_waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("call ended before the audio was sent"))
        self._play_waiters.clear()

    # ------------------------------------------------------------------ sending

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def send_json(self, message: dict[str, Any]) -> None:
        assert self.ws is not None, "not connected"
        await self.ws.send(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a text (str) or binary (bytes) WebSocket message as is."""
        assert self.ws is not None, "not connected"
        await self.ws.send(data)

    def media_message(self, payload: bytes) -> dict[str, Any]:
        self._chunk += 1
        message = {
            "event": "media",
            "sequenceNumber": self._next_seq(),
            "media": {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(self._media_ts_ms),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": self.stream_sid,
        }
        self._media_ts_ms += round(len(payload) / SAMPLE_RATE * 1000)
        return message

    async def play(self, audio: AudioLike, *, realtime: bool = True) -> float:
        """Say something: queue it on the line and wait until its last frame has gone out.

        Returns the send time of the last frame, i.e. of the last sample of `audio` (a real line sends
        a frame once its 20 ms have been captured). With `realtime=False` the frames go out in one
        burst instead of one per 20 ms.
        """
        frames = ulaw_frames(to_ulaw(audio))
        if not frames:
            raise ValueError("nothing to play")
        if not realtime:
            for frame in frames:
                await self.send_json(self.media_message(frame))
                self.frames_sent += 1
            return time.perf_counter()
        if self._stopping or self.closed.is_set():
            raise ConnectionError("the call has ended")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        self._queue.extend(frames)
        self._queued_total += len(frames)
        self._play_waiters.append((self._queued_total, fut))
        return await fut

    async def play_nowait(self, audio: AudioLike) -> asyncio.Future[float]:
        """Queue speech and return at once; the future resolves as `play()` would return."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        frames = ulaw_frames(to_ulaw(audio))
        self._queue.extend(frames)
        self._queued_total += len(frames)
        self._play_waiters.append((self._queued_total, fut))
        return fut

    async def silence(self, seconds: float) -> None:
        """Let the line carry silence for a while (the sender keeps streaming)."""
        await asyncio.sleep(seconds)

    async def dtmf(self, digits: str, *, gap_s: float = 0.1) -> None:
        """Press keys: one `dtmf` message per digit, as Twilio sends them."""
        for digit in digits:
            await self.send_json(
                {
                    "event": "dtmf",
                    "streamSid": self.stream_sid,
                    "sequenceNumber": self._next_seq(),
                    "dtmf": {"track": "inbound_track", "digit": digit},
                }
            )
            self.events.append(CallEvent(time.perf_counter(), "sent_dtmf", {"digit": digit}))
            await asyncio.sleep(gap_s)

    async def _send_loop(self) -> None:
        """One frame every 20 ms on an absolute schedule: queued speech, else silence."""
        t0 = time.perf_counter()
        n = 0
        try:
            while not self._stopping:
                due = t0 + n * FRAME_S
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._stopping:
                    break
                if self._queue:
                    frame = self._queue.pop(0)
                    is_payload = True
                elif self.send_silence:
                    frame, is_payload = SILENCE_FRAME, False
                else:
                    n += 1
                    continue
                await self.send_json(self.media_message(frame))
                sent_at = time.perf_counter()
                self.frames_sent += 1
                if is_payload:
                    self._sent_payload_frames += 1
                    while self._play_waiters and self._play_waiters[0][0] <= self._sent_payload_frames:
                        _index, fut = self._play_waiters.pop(0)
                        if not fut.done():
                            fut.set_result(sent_at)
                n += 1
        except ConnectionClosed:
            pass
        finally:
            for _index, fut in self._play_waiters:
                if not fut.done():
                    fut.set_exception(ConnectionError("the call ended before the audio was sent"))
            self._play_waiters.clear()

    # ------------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self._handle(message)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.close_code
            self.close_code = rcvd
            self.close_reason = self.ws.close_reason
            self.events.append(
                CallEvent(
                    time.perf_counter(), "closed", {"code": self.close_code, "reason": self.close_reason}
                )
            )
            self.closed.set()
            self._stopping = True
            self._rx_changed.set()

    def _handle(self, message: str | bytes) -> None:
        now = time.perf_counter()
        if isinstance(message, bytes):
            self.protocol_errors.append(f"binary message of {len(message)} bytes")
            return
        try:
            data = json.loads(message)
            event = data["event"]
        except (ValueError, KeyError, TypeError):
            self.protocol_errors.append(f"not a Media Streams message: {message[:80]!r}")
            return
        if event in ("media", "mark", "clear") and data.get("streamSid") != self.stream_sid:
            self.protocol_errors.append(f"{event} for streamSid {data.get('streamSid')!r}")
        if event == "media":
            try:
                payload = base64.b64decode(data["media"]["payload"], validate=True)
            except (KeyError, TypeError, ValueError):
                self.protocol_errors.append(f"bad media payload: {message[:80]!r}")
                return
            play_at = max(now, self._playback_end)
            self._playback_end = play_at + len(payload) / SAMPLE_RATE
            self.chunks.append(RxChunk(now, play_at, payload))
            for i in range(0, len(payload), FRAME_SAMPLES):
                piece = payload[i : i + FRAME_SAMPLES]
                rms = frame_rms(ulaw_decode(piece))
                self._rx.append(RxFrame(now, play_at + i / SAMPLE_RATE, piece, rms))
                self._rx_at.append(now)
        elif event == "mark":
            name = str(data.get("mark", {}).get("name", ""))
            self.events.append(CallEvent(now, "mark", {"name": name}))
            self._pending_marks.append((max(now, self._playback_end), name))
        elif event == "clear":
            self.events.append(CallEvent(now, "clear", {}))
            self._playback_end = now
            # Twilio empties its buffer and returns every mark still waiting on that audio.
            self._pending_marks = [(now, name) for _due, name in self._pending_marks]
        else:
            self.protocol_errors.append(f"unexpected event {event!r}")
        self._rx_changed.set()

    async def _mark_loop(self) -> None:
        try:
            while not self.closed.is_set():
                now = time.perf_counter()
                due = [m for m in self._pending_marks if m[0] <= now]
                for mark in due:
                    self._pending_marks.remove(mark)
                    await self.send_json(
                        {
                            "event": "mark",
                            "sequenceNumber": self._next_seq(),
                            "streamSid": self.stream_sid,
                            "mark": {"name": mark[1]},
                        }
                    )
                    self.events.append(CallEvent(time.perf_counter(), "mark_echoed", {"name": mark[1]}))
                await asyncio.sleep(0.01)
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------ analysis

    def rx_frames(self, since: float = 0.0) -> list[RxFrame]:
        """Received audio cut into 20 ms frames, those arriving at or after `since`."""
        return self._rx[bisect.bisect_left(self._rx_at, since) :]

    def sound_frames(self, since: float = 0.0, until: float = float("inf")) -> list[RxFrame]:
        return [f for f in self.rx_frames(since) if f.rms > self.sound_rms and f.at < until]

    def events_of(self, kind: str) -> list[CallEvent]:
        return [e for e in self.events if e.kind == kind]

    @property
    def clears(self) -> list[float]:
        return [e.at for e in self.events_of("clear")]

    @property
    def marks(self) -> list[tuple[float, str]]:
        return [(e.at, e.detail["name"]) for e in self.events_of("mark")]

    def received_ulaw(self) -> bytes:
        return b"".join(c.payload for c in self.chunks)

    async def hear_greeting(self, timeout: float = 20.0, pause_s: float = 0.3) -> Reply:
        """Wait for the bot's first words, listen to their end, then pause as a caller would."""
        assert self.started_at is not None, "connect() first"
        greeting = await self.wait_for_reply(self.started_at, timeout=timeout)
        await asyncio.sleep(max(0.0, greeting.play_end - time.perf_counter()) + pause_s)
        return greeting

    async def ask(self, speech: Speech, timeout: float = 30.0, pause_s: float = 0.3) -> tuple[Reply, float]:
        """Say `speech` in real time, hear the reply out; returns it and its voice-to-voice delay (s)."""
        spoken_at = await self.play(speech)
        reply = await self.wait_for_reply(spoken_at, timeout=timeout)
        await asyncio.sleep(max(0.0, reply.play_end - time.perf_counter()) + pause_s)
        return reply, reply.first_at - spoken_at

    async def wait_for_reply(
        self,
        after_t: float | None = None,
        *,
        silence_gap: float = 0.8,
        timeout: float = 30.0,
        first_audio_timeout: float | None = None,
    ) -> Reply:
        """Wait for the bot's next reply: its first sound frame arriving at or after `after_t`, until it
        has been quiet for `silence_gap` seconds.

        Quiet means both: `silence_gap` of silent frames in the received audio, or no audio arriving
        for `silence_gap` after the playback clock has caught up (a server that sends nothing between
        utterances, or one that sends faster than real time, then waits). Raises `ReplyTimeout` when
        no sound arrives within `first_audio_timeout` (default `timeout`); returns an incomplete reply
        when the bot is still speaking at `timeout`.
        """
        start = time.perf_counter()
        after_t = start if after_t is None else after_t
        deadline = start + timeout
        first_deadline = start + (first_audio_timeout if first_audio_timeout is not None else timeout)
        gap_frames = max(1, round(silence_gap / FRAME_S))
        while True:
            now = time.perf_counter()
            frames = self.rx_frames(after_t)
            first = next((i for i, f in enumerate(frames) if f.rms > self.sound_rms), None)
            if first is not None:
                reply = frames[first:]
                last = max(i for i, f in enumerate(reply) if f.rms > self.sound_rms)
                trailing_silent = len(reply) - 1 - last
                quiet_on_wire = now - max(reply[-1].at, reply[-1].play_at + FRAME_S) >= silence_gap
                done = trailing_silent >= gap_frames or quiet_on_wire or self.closed.is_set()
                if done or now >= deadline:
                    kept = reply[: last + 1]
                    first_at = kept[0].at
                    cleared = any(first_at <= t <= now for t in self.clears)
                    return Reply(first_at, kept[-1].at, kept, complete=done, cleared=cleared)
            elif self.closed.is_set():
                raise ReplyTimeout(
                    f"the server closed the call ({self.close_code} {self.close_reason!r}) without replying"
                )
            elif now >= first_deadline:
                raise ReplyTimeout(
                    f"no reply within {first_deadline - start:.1f} s (received {len(self.chunks)} media "
                    f"messages in all, {len(self.clears)} clears, {len(self.marks)} marks)"
                )
            self._rx_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rx_changed.wait(), 0.02)

    async def wait_for_audio(self, after_t: float | None = None, *, timeout: float = 30.0) -> float:
        """Wait for the first sound frame arriving at or after `after_t`; returns its arrival time."""
        start = time.perf_counter()
        after_t = start if after_t is None else after_t
        while True:
            sound = next((f for f in self.rx_frames(after_t) if f.rms > self.sound_rms), None)
            if sound is not None:
                return sound.at
            if self.closed.is_set():
                raise ReplyTimeout(f"the server closed the call ({self.close_code} {self.close_reason!r})")
            if time.perf_counter() - start >= timeout:
                raise ReplyTimeout(f"no audio within {timeout:.1f} s")
            self._rx_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rx_changed.wait(), 0.02)

    async def wait_for_quiet(self, quiet_s: float = 0.8, timeout: float = 30.0) -> float:
        """Wait until nothing audible has arrived (or is still playing) for `quiet_s`. Returns the time."""
        deadline = time.perf_counter() + timeout
        while True:
            now = time.perf_counter()
            sound = self.sound_frames(since=now - 60)
            last = max((max(f.at, f.play_at + FRAME_S) for f in sound), default=self.started_at or 0.0)
            if now - last >= quiet_s:
                return now
            if now >= deadline:
                raise ReplyTimeout(f"the bot was still speaking after {timeout:.1f} s")
            await asyncio.sleep(0.02)
