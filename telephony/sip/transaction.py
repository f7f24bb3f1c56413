"""SIP transactions over UDP (RFC 3261 section 17), sans-IO.

A transaction owns the retransmissions of one request and its final response. Time is an input:
callers pass ``now`` (monotonic seconds) and ask :meth:`next_deadline` when to call ``on_timer``.
Nothing here sends anything; methods return the datagrams to send.

Timers, named as in the RFC: A/B/D (client INVITE), E/F/K (client non-INVITE), G/H/I (server
INVITE, non-2xx), J (server non-INVITE). The 2xx to an INVITE is the dialog's to retransmit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from telephony.sip.message import Headers, SipRequest, SipResponse, serialize

T1: Final = 0.5
T2: Final = 4.0
T4: Final = 5.0

Addr = tuple[str, int]


@dataclass(frozen=True)
class Timers:
    t1: float = T1
    t2: float = T2
    t4: float = T4

    @property
    def timeout(self) -> float:
        """Timers B, F, H and J: 64*T1."""
        return 64 * self.t1


def client_key(branch: str, method: str) -> tuple[str, str]:
    # An ACK to a non-2xx belongs to the INVITE transaction; a CANCEL has its own.
    return branch, "INVITE" if method == "ACK" else method


def server_key(branch: str, sent_by: str, method: str) -> tuple[str, str, str]:
    return branch, sent_by, "INVITE" if method == "ACK" else method


def non_2xx_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """RFC 3261 17.1.1.3: the ACK a client transaction sends itself for a 300-699 to an INVITE."""
    headers = Headers()
    headers.add("Via", invite.headers.get_all("Via")[0])
    for name in ("Route",):
        for value in invite.headers.get_all(name):
            headers.add(name, value)
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", invite.headers.get("Call-ID") or "")
    headers.add("CSeq", f"{invite.cseq[0]} ACK")
    return SipRequest("ACK", invite.uri, headers)


@dataclass
class ClientTransaction:
    """Sends one request, retransmits it until answered, and absorbs retransmitted finals."""

    request: SipRequest
    addr: Addr
    timers: Timers
    state: str = "calling"
    final: SipResponse | None = None
    timed_out: bool = False
    _data: bytes = b""
    _interval: float = 0.0
    _retransmit_at: float | None = None
    _timeout_at: float | None = None
    _end_at: float | None = None
    _ack: bytes | None = None

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def start(self, now: float) -> bytes:
        self._data = serialize(self.request)
        self.state = "calling" if self.is_invite else "trying"
        self._interval = self.timers.t1
        self._retransmit_at = now + self._interval
        self._timeout_at = now + self.timers.timeout
        return self._data

    def on_response(self, response: SipResponse, now: float) -> tuple[list[bytes], bool]:
        """Returns (datagrams to send, whether the TU should see the response)."""
        if self.state == "terminated":
            return [], False
        provisional = response.status < 200
        if self.is_invite:
            return self._invite_response(response, provisional, now)
        if self.state == "completed":
            return [], False
        if provisional:
            self.state = "proceeding"
            return [], True
        self.final = response
        self.state = "completed"
        self._retransmit_at = self._timeout_at = None
        self._end_at = now + self.timers.t4
        return [], True

    def _invite_response(
        self, response: SipResponse, provisional: bool, now: float
    ) -> tuple[list[bytes], bool]:
        if self.state == "completed":
            return ([self._ack] if self._ack else []), False  # the final was retransmitted
        if provisional:
            self.state = "proceeding"
            self._retransmit_at = None  # timer A stops; B still bounds the wait for a final
            return [], True
        self.final = response
        self._retransmit_at = self._timeout_at = None
        if response.status < 300:
            self.state = "terminated"  # the dialog layer ACKs 2xx
            return [], True
        self.state = "completed"
        self._ack = serialize(non_2xx_ack(self.request, response))
        self._end_at = now + 32.0  # timer D, unreliable transport
        return [self._ack], True

    def on_timer(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        if self._end_at is not None and now >= self._end_at:
            self.state = "terminated"
            return out
        if self._timeout_at is not None and now >= self._timeout_at:
            self.state = "terminated"
            self.timed_out = True
            return out
        if self._retransmit_at is not None and now >= self._retransmit_at:
            out.append(self._data)
            if self.is_invite:
                self._interval *= 2
            else:
                # Timer E: doubles up to T2; once a provisional came, it runs at T2.
                self._interval = (
                    self.timers.t2 if self.state == "proceeding" else min(self._interval * 2, self.timers.t2)
                )
            self._retransmit_at = now + self._interval
        return out

    def next_deadline(self) -> float | None:
        times = [t for t in (self._retransmit_at, self._timeout_at, self._end_at) if t is not None]
        return min(times) if times else None


@dataclass
class ServerTransaction:
    """Answers one request, resends its last response on retransmissions, absorbs the ACK."""

    request: SipRequest
    addr: Addr
    timers: Timers
    state: str = "proceeding"
    last: bytes | None = None
    final_status: int | None = None
    ack_timed_out: bool = False
    _interval: float = 0.0
    _retransmit_at: float | None = None
    _timeout_at: float | None = None
    _end_at: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def respond(self, response: SipResponse, now: float) -> bytes:
        data = serialize(response)
        if self.state in ("completed", "confirmed", "terminated"):
            return data  # a late response the TU insists on: send, but keep our state
        self.last = data
        if response.status < 200:
            return data
        self.final_status = response.status
        if not self.is_invite:
            self.state = "completed"
            self._end_at = now + self.timers.timeout  # timer J
        elif response.status < 300:
            self.state = "terminated"  # 2xx retransmission is the dialog's job
        else:
            self.state = "completed"
            self._interval = self.timers.t1
            self._retransmit_at = now + self._interval  # timer G
            self._timeout_at = now + self.timers.timeout  # timer H
        return data

    def on_retransmission(self) -> list[bytes]:
        return [self.last] if self.last and self.state != "confirmed" else []

    def on_ack(self, now: float) -> None:
        if self.state == "completed":
            self.state = "confirmed"
            self._retransmit_at = self._timeout_at = None
            self._end_at = now + self.timers.t4  # timer I

    def on_timer(self, now: float) -> list[bytes]:
        if self._end_at is not None and now >= self._end_at:
            self.state = "terminated"
            return []
        if self._timeout_at is not None and now >= self._timeout_at:
            self.state = "terminated"
            self.ack_timed_out = True
            return []
        if self._retransmit_at is not None and now >= self._retransmit_at and self.last:
            self._interval = min(self._interval * 2, self.timers.t2)
            self._retransmit_at = now + self._interval
            return [self.last]
        return []

    def next_deadline(self) -> float | None:
        times = [t for t in (self._retransmit_at, self._timeout_at, self._end_at) if t is not None]
        return min(times) if times else None
