"""A SIP user agent core for a voice bot, sans-IO: calls in and out, over UDP.

Feed it datagrams (:meth:`SipAgent.receive`) and the clock (:meth:`SipAgent.tick`); take what it
wants sent and what happened from :meth:`SipAgent.drain`. The application answers the events
with :meth:`accept`, :meth:`reject`, :meth:`hangup`, :meth:`refer` and :meth:`invite`.
Media (SDP content, RTP) is the application's: the agent carries SDP bodies as bytes.

Scope: RFC 3261 UA behaviour for INVITE, ACK, BYE, CANCEL, OPTIONS, REFER/NOTIFY (RFC 3515)
and INFO DTMF, with digest authentication (RFC 2617) on our requests, no forking, UDP only.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from telephony.sip.auth import authorization, parse_challenge
from telephony.sip.message import (
    Address,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    is_keepalive,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_address,
    parse_message,
    parse_uri,
    serialize,
)
from telephony.sip.transaction import (
    Addr,
    ClientTransaction,
    ServerTransaction,
    Timers,
    client_key,
    server_key,
)

log = logging.getLogger(__name__)

ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY, INFO"
MAX_TRANSACTIONS: Final = 4096
#: An inbound INVITE the application never answers is refused after this long.
INVITE_ANSWER_LIMIT: Final = 30.0


# --- what the agent hands back -------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    data: bytes
    addr: Addr


@dataclass(frozen=True)
class IncomingCall:
    """A new INVITE. 100 Trying is already sent; answer with accept() or reject()."""

    call: SipCall
    offer: bytes


@dataclass(frozen=True)
class Reinvite:
    """A re-INVITE in a confirmed call (hold, codec change). Answer with accept() or reject()."""

    call: SipCall
    offer: bytes


@dataclass(frozen=True)
class CallConfirmed:
    """Inbound: the caller ACKed our 200 OK; media may flow both ways."""

    call: SipCall


@dataclass(frozen=True)
class CallProgress:
    """Outbound: a provisional response (180 ringing, 183 session progress)."""

    call: SipCall
    status: int


@dataclass(frozen=True)
class CallAnswered:
    """Outbound: the callee answered; ACK is sent."""

    call: SipCall
    answer: bytes


@dataclass(frozen=True)
class CallEnded:
    """The call is over, for ``outcome``: hangup, cancelled, busy, no-answer, rejected, failed."""

    call: SipCall
    outcome: str
    reason: str
    status: int | None = None


@dataclass(frozen=True)
class TransferUpdate:
    """Progress of our REFER: 202 accepted, then the transferee's NOTIFY results; ``final`` ends it."""

    call: SipCall
    status: int
    final: bool


@dataclass(frozen=True)
class DtmfInfo:
    """A digit sent as SIP INFO (application/dtmf-relay) instead of RTP events."""

    call: SipCall
    digit: str


@dataclass(frozen=True)
class Malformed:
    """A datagram that did not parse, or a request that failed validation; for the log."""

    addr: Addr
    error: str


Output = (
    Datagram
    | IncomingCall
    | Reinvite
    | CallConfirmed
    | CallProgress
    | CallAnswered
    | CallEnded
    | TransferUpdate
    | DtmfInfo
    | Malformed
)


# --- calls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(eq=False)
class SipCall:
    """One dialog (or attempt at one) and where it stands."""

    key: str  # unique per agent, stable for the life of the call
    direction: str  # inbound | outbound
    call_id: str
    local: Address
    remote: Address
    remote_target: SipUri
    peer: Addr  # where in-dialog requests go
    state: str = "new"  # new, early, answered, confirmed, ended
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int = -1
    remote_sdp: bytes = b""
    local_sdp: bytes = b""
    credentials: Credentials | None = None
    # inbound: the pending INVITE server transaction; outbound: the INVITE we sent
    invite_tx: ServerTransaction | None = None
    invite_request: SipRequest | None = None
    cancel_requested: bool = False
    cancel_sent: bool = False
    provisional_seen: bool = False
    invite_deadline: float | None = None
    # the 2xx we retransmit until ACKed (inbound) / the ACK we resend on 2xx retransmits (outbound)
    ok_data: bytes | None = None
    ok_interval: float = 0.0
    ok_retransmit_at: float | None = None
    ok_deadline: float | None = None
    ack_data: bytes | None = None
    refer_pending: bool = False

    @property
    def local_tag(self) -> str:
        return self.local.tag or ""

    @property
    def remote_tag(self) -> str:
        return self.remote.tag or ""

    @property
    def ended(self) -> bool:
        return self.state == "ended"


@dataclass(frozen=True)
class AgentConfig:
    host: str  # the address we advertise in Via, Contact and SDP
    port: int
    user: str = "bot"
    user_agent: str = "voicebot"
    timers: Timers = field(default_factory=Timers)


def outcome_for(status: int) -> str:
    if status in (486, 600):
        return "busy"
    if status in (408, 480, 487):
        return "no-answer"
    if status >= 500 and status < 600:
        return "failed"
    return "rejected"


InviteGate = Callable[[Addr, float], bool]


class SipAgent:
    def __init__(self, config: AgentConfig, invite_gate: InviteGate | None = None) -> None:
        self.config = config
        self._invite_gate = invite_gate
        self._out: list[Output] = []
        self._client: dict[tuple[str, str], ClientTransaction] = {}
        self._server: dict[tuple[str, str, str], ServerTransaction] = {}
        self._calls: dict[str, SipCall] = {}
        self._by_dialog: dict[tuple[str, str], SipCall] = {}  # (Call-ID, local tag)
        self._pending_cancel: dict[tuple[str, str], SipCall] = {}  # our INVITE branch -> call
        self._ids = itertools.count(1)
        self.stats = {"received": 0, "malformed": 0, "overload": 0}

    # --- public surface ------------------------------------------------------------------

    def drain(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    @property
    def calls(self) -> list[SipCall]:
        return list(self._calls.values())

    def contact(self) -> str:
        return f"<sip:{self.config.user}@{self._hostport()}>"

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        self.stats["received"] += 1
        if is_keepalive(data):
            return
        try:
            message = parse_message(data)
        except SipParseError as err:
            self.stats["malformed"] += 1
            self._out.append(Malformed(addr, str(err)))
            return
        try:
            if isinstance(message, SipResponse):
                self._on_response(message, now)
            else:
                self._on_request(message, addr, now)
        except SipParseError as err:  # a header that parsed loosely but not as its grammar
            self.stats["malformed"] += 1
            self._out.append(Malformed(addr, str(err)))

    def tick(self, now: float) -> None:
        for key, ctx in list(self._client.items()):
            for data in ctx.on_timer(now):
                self._send(data, ctx.addr)
            if ctx.state == "terminated":
                del self._client[key]
                if ctx.timed_out:
                    self._on_client_timeout(ctx, now)
        for skey, stx in list(self._server.items()):
            for data in stx.on_timer(now):
                self._send(data, stx.addr)
            if stx.state == "terminated":
                del self._server[skey]
        for call in list(self._calls.values()):
            self._call_timers(call, now)

    def next_deadline(self) -> float | None:
        times: list[float] = []
        for tx in (*self._client.values(), *self._server.values()):
            deadline = tx.next_deadline()
            if deadline is not None:
                times.append(deadline)
        for call in self._calls.values():
            times += [t for t in (call.ok_retransmit_at, call.ok_deadline, call.invite_deadline) if t]
        return min(times) if times else None

    def ringing(self, call: SipCall, now: float) -> None:
        if call.invite_tx is not None and call.invite_tx.final_status is None:
            if call.state == "new":
                call.state = "early"
            self._respond(call.invite_tx, 180, now, to_tag=call.local_tag, contact=True)

    def accept(self, call: SipCall, sdp: bytes, now: float) -> None:
        """Answer the pending INVITE (initial or re-INVITE) with 200 OK and our SDP."""
        tx = call.invite_tx
        if tx is None or tx.final_status is not None or call.ended:
            return
        call.local_sdp = sdp
        response = self._response(tx.request, 200, to_tag=call.local_tag, contact=True, body=sdp)
        call.ok_data = tx.respond(response, now)
        self._send(call.ok_data, tx.addr)
        call.invite_tx = None
        call.invite_deadline = None
        call.ok_interval = self.config.timers.t1
        call.ok_retransmit_at = now + call.ok_interval
        call.ok_deadline = now + self.config.timers.timeout
        if call.state != "confirmed":
            call.state = "answered"

    def reject(
        self, call: SipCall, status: int, now: float, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Refuse the pending INVITE. A refused initial INVITE ends the call; a re-INVITE does not."""
        tx = call.invite_tx
        if tx is None or tx.final_status is not None:
            return
        self._respond(tx, status, now, to_tag=call.local_tag, headers=headers)
        call.invite_tx = None
        call.invite_deadline = None
        if call.state != "confirmed":
            self._end(call, "rejected", f"refused with {status}", status)

    def hangup(self, call: SipCall, now: float, status: int = 480) -> None:
        """End the call from our side, whatever its state: BYE, CANCEL or a final refusal."""
        if call.ended:
            return
        if call.direction == "inbound" and call.state in ("new", "early"):
            self.reject(call, status, now)
            return
        if call.direction == "outbound" and call.state in ("new", "early"):
            call.cancel_requested = True
            if call.provisional_seen:
                self._send_cancel(call, now)
            return  # the CANCEL goes once a provisional shows the callee got the INVITE
        if call.invite_tx is not None and call.invite_tx.final_status is None:
            self._respond(call.invite_tx, 487, now, to_tag=call.local_tag)  # a pending re-INVITE
            call.invite_tx = None
        self._send_in_dialog(call, "BYE", now)
        self._end(call, "hangup", "bot hung up")

    def invite(
        self,
        target: str,
        sdp: bytes,
        now: float,
        *,
        dest: Addr,
        from_user: str | None = None,
        display: str | None = None,
        credentials: Credentials | None = None,
    ) -> SipCall:
        """Place a call to ``target`` (a SIP URI), sending the INVITE to ``dest`` (target or proxy)."""
        uri = parse_uri(target)
        local = Address(
            parse_uri(f"sip:{from_user or self.config.user}@{self._hostport()}"),
            display=display,
            params=(("tag", new_tag()),),
        )
        call = SipCall(
            key=f"out-{next(self._ids)}",
            direction="outbound",
            call_id=new_call_id(self.config.host),
            local=local,
            remote=Address(uri),
            remote_target=uri,
            peer=dest,
            local_sdp=sdp,
            credentials=credentials,
            local_seq=1,
        )
        self._register(call)
        self._send_invite(call, now)
        return call

    def refer(self, call: SipCall, target: str, now: float) -> None:
        """Ask the other party to call ``target`` (blind transfer, RFC 3515)."""
        if call.state != "confirmed":
            self._out.append(TransferUpdate(call, 481, True))
            return
        call.refer_pending = True
        self._send_in_dialog(
            call,
            "REFER",
            now,
            headers=(("Refer-To", f"<{target}>"), ("Referred-By", str(call.local.uri).join("<>"))),
        )

    # --- requests in ---------------------------------------------------------------------

    def _on_request(self, request: SipRequest, addr: Addr, now: float) -> None:
        via = request.top_via
        sent_by = _sent_by(via)
        branch = via.branch or ""
        if request.method == "ACK":
            self._on_ack(request, branch, sent_by, now)
            return
        key = server_key(branch, sent_by, request.method)
        existing = self._server.get(key) if branch.startswith("z9hG4bK") else None
        if existing is not None:
            for data in existing.on_retransmission():
                self._send(data, addr)
            return
        tx = ServerTransaction(request, addr, self.config.timers)
        if len(self._server) >= MAX_TRANSACTIONS:
            self.stats["overload"] += 1
            self._send(serialize(make_response(request, 503, headers=(("Retry-After", "5"),))), addr)
            return
        if branch.startswith("z9hG4bK"):
            self._server[key] = tx
        problem = self._check_request(request)
        if problem is not None:
            status, extra = problem
            self._respond(tx, status, now, headers=extra)
            return
        handler = {
            "INVITE": self._on_invite,
            "CANCEL": self._on_cancel,
            "BYE": self._on_bye,
            "OPTIONS": self._on_options,
            "NOTIFY": self._on_notify,
            "INFO": self._on_info,
            "REFER": self._on_refer,
        }.get(request.method)
        if handler is None:
            self._respond(tx, 405, now, headers=(("Allow", ALLOW),))
            return
        handler(tx, now)

    def _check_request(self, request: SipRequest) -> tuple[int, tuple[tuple[str, str], ...]] | None:
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and int(max_forwards) == 0 and request.method != "OPTIONS":
            return 483, ()
        try:
            uri = parse_uri(request.uri)
        except SipParseError:
            return 416, ()
        if uri.scheme not in ("sip", "sips"):
            return 416, ()
        required = [v.strip() for value in request.headers.get_all("Require") for v in value.split(",")]
        unsupported = [r for r in required if r and r not in ("timer",)]
        if unsupported and request.method not in ("CANCEL",):
            return 420, (("Unsupported", ", ".join(unsupported)),)
        return None

    def _on_invite(self, tx: ServerTransaction, now: float) -> None:
        request = tx.request
        if request.to_addr.tag:
            call = self._dialog_call(request)
            if call is None or call.ended:
                self._respond(tx, 481, now)
                return
            if not self._in_sequence(call, request):
                self._respond(tx, 500, now, headers=(("Retry-After", "1"),))
                return
            if call.state != "confirmed" or call.invite_tx is not None or call.ok_retransmit_at is not None:
                self._respond(tx, 491, now)  # an offer is already in progress, or no dialog to modify yet
                return
            self._respond(tx, 100, now)
            call.invite_tx = tx
            call.remote_target = self._contact_uri(request) or call.remote_target
            call.invite_deadline = now + INVITE_ANSWER_LIMIT
            call.remote_sdp = request.body
            self._out.append(Reinvite(call, request.body))
            return
        same = next(
            (
                c
                for c in self._calls.values()
                if c.direction == "inbound"
                and c.call_id == request.call_id
                and c.remote_tag == (request.from_addr.tag or "")
            ),
            None,
        )
        if same is not None:
            first = same.invite_request
            if first is not None and first.top_via.branch == request.top_via.branch:
                # A retransmission that outlived its (2xx-terminated) transaction: resend our 200.
                if same.ok_data is not None:
                    self._send(same.ok_data, tx.addr)
                tx.state = "terminated"  # nothing left for it to do; tick() drops it
                return
            self._respond(tx, 482, now)  # same call arriving by a second path
            return
        if self._invite_gate is not None and not self._invite_gate(tx.addr, now):
            self._respond(
                tx, 503, now, headers=(("Retry-After", "5"),), reason="Too Many Calls From This Source"
            )
            return
        remote_target = self._contact_uri(request)
        if remote_target is None:
            self._respond(tx, 400, now, reason="Missing Contact")
            return
        call = SipCall(
            key=f"in-{next(self._ids)}",
            direction="inbound",
            call_id=request.call_id,
            local=request.to_addr.with_tag(new_tag()),
            remote=request.from_addr,
            remote_target=remote_target,
            peer=tx.addr,
            remote_seq=request.cseq[0],
            remote_sdp=request.body,
            route_set=list(request.headers.get_all("Record-Route")),
            invite_tx=tx,
            invite_request=request,
            invite_deadline=now + INVITE_ANSWER_LIMIT,
        )
        self._register(call)
        self._respond(tx, 100, now)
        self._out.append(IncomingCall(call, request.body))

    def _on_ack(self, request: SipRequest, branch: str, sent_by: str, now: float) -> None:
        tx = self._server.get(server_key(branch, sent_by, "ACK"))
        if tx is not None and tx.final_status is not None and tx.final_status >= 300:
            tx.on_ack(now)  # the ACK to our non-2xx: the transaction absorbs it
            return
        call = self._dialog_call(request)
        if call is None or call.ok_data is None:
            return  # a stray ACK needs no answer
        call.ok_data = None
        call.ok_retransmit_at = call.ok_deadline = None
        if request.body:
            call.remote_sdp = request.body
        if call.state == "answered":
            call.state = "confirmed"
            self._out.append(CallConfirmed(call))

    def _on_cancel(self, tx: ServerTransaction, now: float) -> None:
        request = tx.request
        via = request.top_via
        sent_by = _sent_by(via)
        invite_tx = self._server.get(server_key(via.branch or "", sent_by, "INVITE"))
        if invite_tx is None:
            self._respond(tx, 481, now)
            return
        self._respond(tx, 200, now)
        call = next((c for c in self._calls.values() if c.invite_tx is invite_tx), None)
        if call is None or invite_tx.final_status is not None:
            return  # too late: the INVITE was already answered; the caller will BYE
        self._respond(invite_tx, 487, now, to_tag=call.local_tag)
        call.invite_tx = None
        call.invite_deadline = None
        if call.state == "confirmed":
            return  # a cancelled re-INVITE leaves the dialog as it was
        self._end(call, "cancelled", "caller cancelled before answer", 487)

    def _on_bye(self, tx: ServerTransaction, now: float) -> None:
        call = self._dialog_call(tx.request)
        if call is None or call.ended:
            self._respond(tx, 481, now)
            return
        self._respond(tx, 200, now)
        if call.invite_tx is not None and call.invite_tx.final_status is None:
            self._respond(call.invite_tx, 487, now, to_tag=call.local_tag)
            call.invite_tx = None
        self._end(call, "hangup", "caller hung up")

    def _on_options(self, tx: ServerTransaction, now: float) -> None:
        self._respond(
            tx,
            200,
            now,
            headers=(("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "replaces")),
        )

    def _on_notify(self, tx: ServerTransaction, now: float) -> None:
        call = self._dialog_call(tx.request)
        if call is None:
            self._respond(tx, 481, now)
            return
        self._respond(tx, 200, now)
        if not (tx.request.headers.get("Event") or "").lower().startswith("refer"):
            return
        status = sipfrag_status(tx.request.body)
        terminated = (tx.request.headers.get("Subscription-State") or "").lower().startswith("terminated")
        if status is None:
            if terminated and call.refer_pending:
                call.refer_pending = False
                self._out.append(TransferUpdate(call, 500, True))
            return
        final = status >= 200 or terminated
        if final:
            call.refer_pending = False
        self._out.append(TransferUpdate(call, status, final))

    def _on_info(self, tx: ServerTransaction, now: float) -> None:
        call = self._dialog_call(tx.request)
        if call is None:
            self._respond(tx, 481, now)
            return
        self._respond(tx, 200, now)
        digit = info_digit(tx.request)
        if digit:
            self._out.append(DtmfInfo(call, digit))

    def _on_refer(self, tx: ServerTransaction, now: float) -> None:
        # Callers do not get to redirect the bot to arbitrary destinations.
        call = self._dialog_call(tx.request)
        self._respond(tx, 481 if call is None else 403, now)

    # --- responses in --------------------------------------------------------------------

    def _on_response(self, response: SipResponse, now: float) -> None:
        branch = response.top_via.branch or ""
        method = response.cseq[1]
        ctx = self._client.get(client_key(branch, method))
        if ctx is None:
            self._stray_response(response, method)
            return
        to_send, deliver = ctx.on_response(response, now)
        for data in to_send:
            self._send(data, ctx.addr)
        if ctx.state == "terminated":
            self._client.pop(client_key(branch, method), None)
        if deliver:
            self._deliver(ctx, response, now)

    def _stray_response(self, response: SipResponse, method: str) -> None:
        if method != "INVITE" or not 200 <= response.status < 300:
            return
        call = self._by_dialog.get((response.call_id, response.from_addr.tag or ""))
        if call is not None and call.ack_data is not None:
            self._send(call.ack_data, call.peer)  # a retransmitted 2xx: our ACK was lost

    def _deliver(self, ctx: ClientTransaction, response: SipResponse, now: float) -> None:
        call = self._by_dialog.get((response.call_id, response.from_addr.tag or ""))
        if call is None:
            return
        method = ctx.request.method
        if method == "INVITE":
            self._on_invite_response(call, ctx, response, now)
        elif method == "REFER":
            if response.status >= 300 and self._retry_with_auth(call, ctx, response, now):
                return
            if response.status >= 200:
                final = response.status >= 300
                if final:
                    call.refer_pending = False
                self._out.append(TransferUpdate(call, response.status, final))
        elif method in ("BYE", "CANCEL") and response.status in (401, 407):
            self._retry_with_auth(call, ctx, response, now)

    def _on_invite_response(
        self, call: SipCall, ctx: ClientTransaction, response: SipResponse, now: float
    ) -> None:
        status = response.status
        if call.ended and status >= 200 and status < 300:
            self._ack_2xx(call, response)  # answered after we gave up: take it, then hang up
            self._send_in_dialog(call, "BYE", now)
            return
        if call.ended:
            return
        if status < 200:
            call.provisional_seen = True
            if response.to_addr.tag and call.state == "new":
                call.state = "early"
            if call.cancel_requested:
                self._send_cancel(call, now)  # once: it is a no-op after the first
            elif status > 100:
                self._out.append(CallProgress(call, status))
            return
        if status < 300:
            self._ack_2xx(call, response)
            if call.cancel_requested:
                self._send_in_dialog(call, "BYE", now)
                self._end(call, "no-answer", "answered after we gave up", status)
                return
            call.state = "confirmed"
            call.remote_sdp = response.body
            self._out.append(CallAnswered(call, response.body))
            return
        if (
            status in (401, 407)
            and not call.cancel_requested
            and self._retry_with_auth(call, ctx, response, now)
        ):
            return
        if call.cancel_requested and status == 487:
            self._end(call, "no-answer", "cancelled after no answer", status)
            return
        # Refused credentials are a set-up failure of ours, not the callee declining.
        authenticated = "Authorization" in ctx.request.headers or "Proxy-Authorization" in ctx.request.headers
        outcome = (
            "failed" if status in (401, 407) or (status == 403 and authenticated) else outcome_for(status)
        )
        self._end(call, outcome, f"{status} {response.reason}", status)

    def _ack_2xx(self, call: SipCall, response: SipResponse) -> None:
        call.remote = response.to_addr
        self._by_dialog[(call.call_id, call.local_tag)] = call
        target = self._contact_uri(response)
        if target is not None:
            call.remote_target = target
        call.route_set = list(reversed(response.headers.get_all("Record-Route")))
        request = self._dialog_request(call, "ACK", seq=response.cseq[0])
        call.ack_data = serialize(request)
        call.peer = self._next_hop(call)
        self._send(call.ack_data, call.peer)

    def _retry_with_auth(
        self, call: SipCall, ctx: ClientTransaction, response: SipResponse, now: float
    ) -> bool:
        creds = call.credentials
        if (
            creds is None
            or ctx.request.headers.get("Authorization")
            or ctx.request.headers.get("Proxy-Authorization")
        ):
            return False  # none to give, or already given and refused
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        value = response.headers.get(header)
        if value is None:
            return False
        try:
            challenge = parse_challenge(value)
        except SipParseError:
            return False
        request = SipRequest(
            ctx.request.method, ctx.request.uri, ctx.request.headers.copy(), ctx.request.body
        )
        call.local_seq += 1
        request.headers.set("CSeq", f"{call.local_seq} {request.method}")
        request.headers.set("Via", self._via())
        answer = authorization(challenge, request.method, request.uri, creds.username, creds.password)
        request.headers.set("Authorization" if response.status == 401 else "Proxy-Authorization", answer)
        if request.method == "INVITE":
            call.invite_request = request
        self._start_client(request, ctx.addr, now)
        return True

    def _on_client_timeout(self, ctx: ClientTransaction, now: float) -> None:
        request = ctx.request
        call = self._by_dialog.get((request.call_id, request.from_addr.tag or ""))
        if call is None:
            return
        if request.method == "INVITE" and not call.ended:
            if call.provisional_seen:
                call.cancel_requested = True
                self._send_cancel(call, now)  # the callee may still be ringing
            outcome = "no-answer" if call.provisional_seen else "failed"
            self._end(call, outcome, "no final response (timer B)", 408)
        elif request.method == "REFER" and call.refer_pending:
            call.refer_pending = False
            self._out.append(TransferUpdate(call, 408, True))
        elif request.method == "CANCEL" and not call.ended:
            self._end(call, "no-answer", "callee never answered the CANCEL", 408)

    # --- timers --------------------------------------------------------------------------

    def _call_timers(self, call: SipCall, now: float) -> None:
        if call.ok_deadline is not None and now >= call.ok_deadline:
            # Half-open: we answered, the caller never ACKed. RFC 3261 13.3.1.4: BYE it.
            call.ok_data = None
            call.ok_retransmit_at = call.ok_deadline = None
            self._send_in_dialog(call, "BYE", now)
            self._end(call, "failed", "no ACK for our 200 OK", 408)
            return
        if call.ok_retransmit_at is not None and now >= call.ok_retransmit_at and call.ok_data:
            self._send(call.ok_data, call.peer)
            call.ok_interval = min(call.ok_interval * 2, self.config.timers.t2)
            call.ok_retransmit_at = now + call.ok_interval
        if call.invite_deadline is not None and now >= call.invite_deadline:
            call.invite_deadline = None
            if call.invite_tx is not None:
                self.reject(call, 480 if call.state != "confirmed" else 500, now)
        if call.ended and call.invite_tx is not None:
            if call.invite_tx.final_status is None:  # never leave a re-INVITE hanging on a dead call
                self._respond(call.invite_tx, 487, now, to_tag=call.local_tag)
            call.invite_tx = None
        if call.ended and call.invite_tx is None and call.ok_data is None:
            self._forget(call)

    # --- building and sending --------------------------------------------------------------

    def _send(self, data: bytes, addr: Addr) -> None:
        self._out.append(Datagram(data, addr))

    def _hostport(self) -> str:
        host = self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.config.port}"

    def _via(self) -> str:
        return f"SIP/2.0/UDP {self._hostport()};branch={new_branch()};rport"

    def _response(
        self,
        request: SipRequest,
        status: int,
        *,
        to_tag: str | None = None,
        contact: bool = False,
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
    ) -> SipResponse:
        extra = list(headers)
        if contact:
            extra += [("Contact", self.contact()), ("Allow", ALLOW)]
        extra.append(("Server", self.config.user_agent))
        return make_response(
            request,
            status,
            reason,
            to_tag=to_tag if status > 100 else None,
            headers=extra,
            body=body,
            content_type="application/sdp" if body else None,
        )

    def _respond(
        self,
        tx: ServerTransaction,
        status: int,
        now: float,
        *,
        to_tag: str | None = None,
        contact: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
    ) -> None:
        if to_tag is None and status > 100 and not tx.request.to_addr.tag:
            to_tag = new_tag()
        response = self._response(
            tx.request, status, to_tag=to_tag, contact=contact, headers=headers, reason=reason
        )
        self._send(tx.respond(response, now), tx.addr)

    def _start_client(self, request: SipRequest, addr: Addr, now: float) -> ClientTransaction:
        ctx = ClientTransaction(request, addr, self.config.timers)
        self._client[client_key(request.top_via.branch or "", request.method)] = ctx
        self._send(ctx.start(now), addr)
        return ctx

    def _send_invite(self, call: SipCall, now: float) -> None:
        request = self._dialog_request(call, "INVITE", body=call.local_sdp)
        request.headers.add("Allow", ALLOW)
        call.invite_request = request
        self._start_client(request, call.peer, now)

    def _send_cancel(self, call: SipCall, now: float) -> None:
        invite = call.invite_request
        if invite is None or not call.cancel_requested or call.cancel_sent:
            return
        if call.state in ("confirmed", "ended"):
            return
        headers = Headers()
        headers.add("Via", invite.headers.get_all("Via")[0])
        for value in invite.headers.get_all("Route"):
            headers.add("Route", value)
        headers.add("Max-Forwards", "70")
        headers.add("From", invite.headers.get("From") or "")
        headers.add("To", invite.headers.get("To") or "")
        headers.add("Call-ID", call.call_id)
        headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
        headers.add("User-Agent", self.config.user_agent)
        cancel = SipRequest("CANCEL", invite.uri, headers)
        self._start_client(cancel, call.peer, now)
        call.cancel_sent = True  # the 487 to the INVITE ends the call

    def _send_in_dialog(
        self, call: SipCall, method: str, now: float, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        call.local_seq += 1
        request = self._dialog_request(call, method)
        for name, value in headers:
            request.headers.add(name, value)
        self._start_client(request, self._next_hop(call), now)

    def _dialog_request(
        self, call: SipCall, method: str, *, body: bytes = b"", seq: int | None = None
    ) -> SipRequest:
        headers = Headers()
        headers.add("Via", self._via())
        for route in call.route_set:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", str(call.local))
        headers.add("To", str(call.remote))
        headers.add("Call-ID", call.call_id)
        headers.add("CSeq", f"{call.local_seq if seq is None else seq} {method}")
        headers.add("Contact", self.contact())
        headers.add("User-Agent", self.config.user_agent)
        if body:
            headers.add("Content-Type", "application/sdp")
        return SipRequest(method, str(call.remote_target), headers, body)

    def _next_hop(self, call: SipCall) -> Addr:
        hop: SipUri | None = None
        if call.route_set:
            try:
                hop = parse_address(call.route_set[0]).uri
            except SipParseError:
                hop = None
        hop = hop or call.remote_target
        host, port = hop.host_port()
        return (host.strip("[]"), port)

    def _contact_uri(self, message: SipRequest | SipResponse) -> SipUri | None:
        value = message.headers.get("Contact")
        if not value or value.strip() == "*":
            return None
        try:
            return parse_address(value).uri
        except SipParseError:
            return None

    def _in_sequence(self, call: SipCall, request: SipRequest) -> bool:
        seq = request.cseq[0]
        if seq <= call.remote_seq:
            return False
        call.remote_seq = seq
        return True

    # --- call table ----------------------------------------------------------------------

    def _register(self, call: SipCall) -> None:
        self._calls[call.key] = call
        self._by_dialog[(call.call_id, call.local_tag)] = call

    def _dialog_call(self, request: SipRequest) -> SipCall | None:
        call = self._by_dialog.get((request.call_id, request.to_addr.tag or ""))
        if call is None:
            return None
        if call.remote_tag and request.from_addr.tag != call.remote_tag:
            return None
        return call

    def _end(self, call: SipCall, outcome: str, reason: str, status: int | None = None) -> None:
        if call.ended:
            return
        call.state = "ended"
        call.invite_deadline = None
        call.ok_data = None
        call.ok_retransmit_at = call.ok_deadline = None
        self._out.append(CallEnded(call, outcome, reason, status))

    def _forget(self, call: SipCall) -> None:
        self._calls.pop(call.key, None)
        # Keep the dialog key a while for late retransmissions? The transactions absorb them.
        self._by_dialog.pop((call.call_id, call.local_tag), None)


def _sent_by(via: Via) -> str:
    host = f"[{via.host}]" if ":" in via.host else via.host
    return f"{host}:{via.port or 5060}"


def sipfrag_status(body: bytes) -> int | None:
    """The status code of a message/sipfrag body such as ``SIP/2.0 200 OK``."""
    line = body.split(b"\n", 1)[0].strip()
    parts = line.split()
    if len(parts) >= 2 and parts[0].upper() == b"SIP/2.0" and parts[1].isdigit():
        status = int(parts[1])
        return status if 100 <= status <= 699 else None
    return None


def info_digit(request: SipRequest) -> str | None:
    content_type = (request.headers.get("Content-Type") or "").lower()
    text = request.body.decode("utf-8", "replace")
    if content_type.startswith("application/dtmf-relay"):
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                digit = value.strip()[:1].upper()
                return digit if digit and digit in "0123456789*#ABCD" else None
    elif content_type.startswith("application/dtmf"):
        digit = text.strip()[:1].upper()
        return digit if digit and digit in "0123456789*#ABCD" else None
    return None
