"""Thin asyncio adapter for one call's RTP: a UDP socket, a receive queue and a 20 ms send clock.

The protocol work (packet format, reordering, loss, DTMF events, G.711) is in the sans-IO
:mod:`telephony.sip.rtp`. This module only moves datagrams and keeps time. Sending is
continuous, as a phone does: queued bot audio when there is some, codec silence otherwise, so
peers with NAT bindings or media timeouts stay happy. Nothing is sent while the call is on hold.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from contextlib import suppress
from typing import Final, cast

import numpy as np
from numpy.typing import NDArray

from telephony.sip.rtp import AudioChunk, DtmfDigit, RtpReceiver, RtpSender, is_rtcp
from telephony.sip.sdp import Negotiated

log = logging.getLogger(__name__)

RTP_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz
#: Inbound items kept when the pipeline falls behind (10 s of 20 ms packets); older ones drop.
MAX_INBOUND: Final = 500

Inbound = AudioChunk | DtmfDigit


class RtpSession(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue()
        self.last_received = time.monotonic()
        self.negotiated: Negotiated | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: RtpReceiver | None = None
        self._sender: RtpSender | None = None
        self._remote: tuple[str, int] | None = None
        self._latched = False
        self._frames: deque[NDArray[np.int16]] = deque()
        self._partial = np.zeros(0, dtype=np.int16)
        self._events: deque[bytes] = deque()  # DTMF packets, sent in place of audio
        self._drained = asyncio.Event()
        self._drained.set()
        self._send_task: asyncio.Task[None] | None = None
        self._ssrc = random.getrandbits(32)
        self.stats = {"sent": 0, "received": 0, "dropped_inbound": 0}

    @classmethod
    async def open(cls, host: str, ports: tuple[int, int] | None = None) -> RtpSession:
        """Bind a UDP socket on ``host``: an even port from ``ports`` (inclusive), or any port."""
        loop = asyncio.get_running_loop()
        candidates = [0]
        if ports is not None:
            low, high = ports
            candidates = [p for p in range(low + low % 2, high + 1, 2)]
            random.shuffle(candidates)
        last_error: OSError | None = None
        for port in candidates[:200]:
            try:
                _, protocol = await loop.create_datagram_endpoint(cls, local_addr=(host, port))
                return protocol
            except OSError as err:
                last_error = err
        raise OSError(f"no free RTP port on {host} in {ports}: {last_error}")

    @property
    def local_port(self) -> int:
        assert self._transport is not None
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    def configure(self, negotiated: Negotiated) -> None:
        """Apply an offer/answer result; called again on a re-INVITE (hold, resume, new codec)."""
        changed = self.negotiated is None or negotiated.codec != self.negotiated.codec
        self.negotiated = negotiated
        self._remote = (negotiated.remote_host, negotiated.remote_port)
        self._latched = False
        if changed:
            self._receiver = RtpReceiver(negotiated.codec, negotiated.dtmf_payload_type)
            self._sender = RtpSender(negotiated.codec, negotiated.dtmf_payload_type, ssrc=self._ssrc)
        if self._send_task is None:
            self._send_task = asyncio.get_running_loop().create_task(self._send_loop())

    # --- receiving ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport; it quacks like one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._receiver is None or is_rtcp(data):
            return
        self.last_received = time.monotonic()
        self.stats["received"] += 1
        items = self._receiver.receive(data)
        if not self._latched and self._receiver.stats.get("decoded", 0) > 0:
            # Symmetric RTP: answer where the peer's media comes from. Behind NAT, or with a phone
            # that advertises an address it does not send from, the SDP address is unreachable.
            self._latched = True
            source = (addr[0], addr[1])
            if source != self._remote:
                log.info("RTP: peer sends from %s:%d, not %s; sending there", *source, self._remote)
                self._remote = source
        for item in items:
            if self.inbound.qsize() >= MAX_INBOUND:
                self.stats["dropped_inbound"] += 1
                with suppress(asyncio.QueueEmpty):
                    self.inbound.get_nowait()
            self.inbound.put_nowait(item)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: the SIP side notices and ends the call.
        log.debug("RTP socket error: %s", exc)

    def push_dtmf(self, digit: str) -> None:
        """A digit that came by SIP INFO joins the RTP ones."""
        self.inbound.put_nowait(DtmfDigit(digit, 100))

    # --- sending -----------------------------------------------------------------------------

    @property
    def queued_frames(self) -> int:
        return len(self._frames)

    def play(self, pcm: NDArray[np.int16]) -> None:
        """Queue 8 kHz audio; it goes out in whole 20 ms packets."""
        pcm = np.concatenate((self._partial, pcm)) if len(self._partial) else pcm
        whole = len(pcm) - len(pcm) % FRAME_SAMPLES
        for start in range(0, whole, FRAME_SAMPLES):
            self._frames.append(pcm[start : start + FRAME_SAMPLES])
        self._partial = pcm[whole:].copy()
        if self._frames:
            self._drained.clear()

    def flush_partial(self) -> None:
        """Pad and queue the last part-frame, at the end of a reply."""
        if len(self._partial):
            frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            frame[: len(self._partial)] = self._partial
            self._partial = np.zeros(0, dtype=np.int16)
            self._frames.append(frame)
            self._drained.clear()

    def clear(self) -> None:
        """Barge-in: drop what has not been sent yet."""
        self._frames.clear()
        self._partial = np.zeros(0, dtype=np.int16)
        self._drained.set()
        if self._sender is not None:
            self._sender.mark_talkspurt()

    async def wait_queue_below(self, frames: int) -> None:
        while len(self._frames) >= frames:
            self._drained.clear()
            await self._drained.wait()

    def send_dtmf(self, digit: str) -> None:
        if self._sender is not None and self.negotiated and self.negotiated.dtmf_payload_type is not None:
            self._events.extend(self._sender.dtmf(digit))

    async def _send_loop(self) -> None:
        period = FRAME_SAMPLES / RTP_RATE
        next_at = time.monotonic()
        while True:
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:
                next_at = time.monotonic()  # the loop stalled: resync rather than burst
            self._send_one()

    def _send_one(self) -> None:
        if self._sender is None or self._transport is None or self._remote is None:
            return
        negotiated = self.negotiated
        sending = (
            negotiated is not None
            and not negotiated.on_hold
            and negotiated.direction
            in (
                "sendrecv",
                "sendonly",
            )
        )
        if self._events:
            packet = self._events.popleft()
        elif self._frames:
            packet = self._sender.audio(self._frames.popleft())
        else:
            packet = self._sender.silence()
        if len(self._frames) <= 1:
            self._drained.set()
        if sending:
            self._transport.sendto(packet, self._remote)
            self.stats["sent"] += 1

    def close(self) -> None:
        if self._send_task is not None:
            self._send_task.cancel()
            self._send_task = None
        if self._transport is not None:
            self._transport.close()
        self._drained.set()
