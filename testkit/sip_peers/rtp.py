"""RTP on the test side: parse packets (from a socket or a pcap), read RFC 2833 digits, and a sink
that records what a callee's media port receives."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.sip_peers.common import HOST, RTP_EVENT_DIGITS


@dataclass(frozen=True)
class RtpPacket:
    t: float  # monotonic arrival (RtpSink) or capture time (pcap)
    pt: int
    marker: bool
    seq: int
    ts: int
    ssrc: int
    payload: bytes
    src: tuple[str, int] = ("", 0)


def parse_rtp(data: bytes, t: float = 0.0, src: tuple[str, int] = ("", 0)) -> RtpPacket | None:
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    cc = data[0] & 0x0F
    offset = 12 + 4 * cc
    if data[0] & 0x10 and len(data) >= offset + 4:
        offset += 4 + 4 * struct.unpack(">H", data[offset + 2 : offset + 4])[0]
    seq, ts, ssrc = struct.unpack(">HII", data[2:12])
    return RtpPacket(t, data[1] & 0x7F, bool(data[1] & 0x80), seq, ts, ssrc, data[offset:], src)


def rfc2833_digits(packets: Sequence[RtpPacket], pt: int = 101) -> str:
    """Digits from RFC 2833 telephone-events: one digit per (ssrc, timestamp) event."""
    seen: dict[tuple[int, int], str] = {}
    for p in packets:
        if p.pt == pt and len(p.payload) >= 4 and (p.ssrc, p.ts) not in seen:
            seen[(p.ssrc, p.ts)] = RTP_EVENT_DIGITS[p.payload[0]] if p.payload[0] < 16 else "?"
    return "".join(seen.values())


def read_pcap_rtp(path: Path) -> list[RtpPacket]:
    """RTP packets of a classic libpcap file (Ethernet or Linux-cooked, IPv4/UDP), no dependencies."""
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {1: 14, 113: 16, 101: 0}.get(linktype, 14)
    out: list[RtpPacket] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ip = frame[link_len:]
        if not ip or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        pkt = parse_rtp(udp[8:], sec + usec / 1e6)
        if pkt is not None:
            out.append(pkt)
    return out


class RtpSink:
    """Loopback UDP socket that records every RTP packet it gets (a callee's media port for tests).

    Put its ``port`` in an SDP (``SippUas(sdp_port=sink.port, rtp_echo=False)``). Optionally echoes."""

    def __init__(self, echo: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.echo = echo
        self.packets: list[RtpPacket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rtp-sink-{self.port}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            pkt = parse_rtp(data, time.monotonic(), addr)
            if pkt is not None:
                self.packets.append(pkt)
            if self.echo:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, addr)

    def digits(self, pt: int = 101) -> str:
        return rfc2833_digits(self.packets, pt)

    def count(self, pt: int) -> int:
        return sum(1 for p in self.packets if p.pt == pt)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> RtpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
