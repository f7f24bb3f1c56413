"""The SIP user agent core, sans-IO: hand-written peer messages (as sipp or baresip would send them)
and two agents wired to each other in memory, all on a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

from telephony.sip import agent as agent_module
from telephony.sip.agent import (
    ALLOW,
    INVITE_ANSWER_LIMIT,
    AgentConfig,
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallProgress,
    Credentials,
    Datagram,
    DtmfInfo,
    IncomingCall,
    Malformed,
    Output,
    Reinvite,
    SipAgent,
    SipCall,
    TransferUpdate,
)
from telephony.sip.auth import check_authorization
from telephony.sip.message import (
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    new_tag,
    parse_message,
    serialize,
)
from testkit.sip_requests import sip_request

BOT = ("192.0.2.1", 5060)
PEER = ("192.0.2.2", 5062)
BOT_URI = "sip:bot@192.0.2.1:5060"
PEER_CONTACT = "<sip:alice@192.0.2.2:5062>"
OFFER = (
    b"v=0\r\no=alice 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
HOLD = OFFER.replace(b"a=sendrecv", b"a=sendonly")
ANSWER = (
    b"v=0\r\no=bot 2 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n"
)


# --- helpers -------------------------------------------------------------------------------------


def new_agent(
    gate: Callable[[tuple[str, int], float], bool] | None = None, addr: tuple[str, int] = BOT
) -> SipAgent:
    return SipAgent(AgentConfig(addr[0], addr[1]), invite_gate=gate)


def msgs(outputs: Iterable[Output]) -> list[SipMessage]:
    return [parse_message(o.data) for o in outputs if isinstance(o, Datagram)]


def events(outputs: Iterable[Output]) -> list[Output]:
    return [o for o in outputs if not isinstance(o, Datagram)]


def responses(outputs: Iterable[Output]) -> list[SipResponse]:
    return [m for m in msgs(outputs) if isinstance(m, SipResponse)]


def requests(outputs: Iterable[Output]) -> list[SipRequest]:
    return [m for m in msgs(outputs) if isinstance(m, SipRequest)]


def statuses(outputs: Iterable[Output]) -> list[int]:
    return [r.status for r in responses(outputs)]


def ended(outputs: Iterable[Output]) -> list[CallEnded]:
    return [e for e in outputs if isinstance(e, CallEnded)]


def feed(agent: SipAgent, data: bytes, now: float, addr: tuple[str, int] = PEER) -> list[Output]:
    agent.receive(data, addr, now)
    return agent.drain()


def run(agent: SipAgent, until: float) -> list[tuple[float, Output]]:
    """Tick from deadline to deadline up to ``until`` (then once at ``until``)."""
    out: list[tuple[float, Output]] = []
    for _ in range(10_000):
        deadline = agent.next_deadline()
        if deadline is None or deadline > until:
            break
        agent.tick(deadline)
        out += [(deadline, o) for o in agent.drain()]
    else:
        raise AssertionError("deadline never cleared")
    agent.tick(until)
    out += [(until, o) for o in agent.drain()]
    return out


def only(outputs: list[tuple[float, Output]]) -> list[Output]:
    return [o for _, o in outputs]


def assert_idle(agent: SipAgent, kept: int = 0) -> None:
    assert agent._client == {}
    assert agent._server == {}
    assert len(agent.calls) == kept


@dataclass
class Phone:
    """A hand-scripted peer: builds requests as text and answers the bot's requests."""

    addr: tuple[str, int] = PEER
    user: str = "alice"
    call_id: str = field(default_factory=lambda: f"{new_tag()}@192.0.2.2")
    tag: str = field(default_factory=new_tag)
    remote_tag: str | None = None
    seq: int = 0
    invite_branch: str = ""
    invite_seq: int = 0

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.addr[0]}:{self.addr[1]}>"

    def request(
        self,
        method: str,
        *,
        seq: int | None = None,
        branch: str | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
        content_type: str = "application/sdp",
        headers: Iterable[tuple[str, str]] = (),
        uri: str = BOT_URI,
        contact: bool = True,
    ) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return sip_request(
            method, uri, sent_by=f"{self.addr[0]}:{self.addr[1]}", branch=branch or new_branch(),
            from_name="Alice", from_uri=f"sip:{self.user}@{self.addr[0]}:{self.addr[1]}", from_tag=self.tag,
            to_uri=BOT_URI, to_tag=to_tag, call_id=self.call_id, cseq=seq,
            contact=f"sip:{self.user}@{self.addr[0]}:{self.addr[1]}" if contact else None,
            headers=[("User-Agent", "sipp"), *headers], body=body, content_type=content_type,
        )  # fmt: skip

    def invite(self, body: bytes = OFFER, **kw: object) -> bytes:
        self.invite_branch = str(kw.pop("branch", None) or new_branch())
        self.seq += 1
        self.invite_seq = self.seq
        return self.request("INVITE", seq=self.seq, branch=self.invite_branch, body=body, **kw)  # type: ignore[arg-type]

    def reinvite(self, body: bytes = HOLD, **kw: object) -> bytes:
        return self.invite(body, to_tag=self.remote_tag, **kw)

    def ack(self, **kw: object) -> bytes:
        """The ACK to a 2xx: its own transaction."""
        return self.request("ACK", seq=self.invite_seq, to_tag=self.remote_tag, **kw)  # type: ignore[arg-type]

    def ack_non_2xx(self, to_tag: str | None) -> bytes:
        return self.request("ACK", seq=self.invite_seq, branch=self.invite_branch, to_tag=to_tag)

    def cancel(self) -> bytes:
        return self.request("CANCEL", seq=self.invite_seq, branch=self.invite_branch)

    def in_dialog(self, method: str, **kw: object) -> bytes:
        return self.request(method, to_tag=self.remote_tag, **kw)  # type: ignore[arg-type]

    def reply(
        self,
        request: SipRequest,
        status: int,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        contact: bool = True,
    ) -> bytes:
        extra = list(headers)
        if contact and request.method == "INVITE" and 100 < status < 300:
            extra.append(("Contact", self.contact))
        response = make_response(
            request,
            status,
            to_tag=self.tag if status > 100 else None,
            headers=extra,
            body=body,
            content_type="application/sdp" if body else None,
        )
        return serialize(response)


def incoming(agent: SipAgent, phone: Phone, now: float = 0.0, **kw: object) -> tuple[SipCall, list[Output]]:
    out = feed(agent, phone.invite(**kw), now)
    calls = [e.call for e in out if isinstance(e, IncomingCall)]
    assert len(calls) == 1, out
    return calls[0], out


def confirmed_inbound(agent: SipAgent, phone: Phone, now: float = 0.0) -> SipCall:
    call, _ = incoming(agent, phone, now)
    agent.accept(call, ANSWER, now)
    ok = responses(agent.drain())[0]
    phone.remote_tag = ok.to_addr.tag
    out = feed(agent, phone.ack(), now)
    assert events(out) == [CallConfirmed(call)]
    return call


def outbound(
    agent: SipAgent, now: float = 0.0, credentials: Credentials | None = None
) -> tuple[SipCall, SipRequest, Phone]:
    call = agent.invite("sip:alice@192.0.2.2:5062", ANSWER, now, dest=PEER, credentials=credentials)
    out = agent.drain()
    assert [type(o) for o in out] == [Datagram]
    assert out[0].addr == PEER
    invite = requests(out)[0]
    phone = Phone(call_id=call.call_id, remote_tag=call.local_tag)
    return call, invite, phone


def confirmed_outbound(agent: SipAgent, now: float = 0.0) -> tuple[SipCall, Phone]:
    call, invite, phone = outbound(agent, now)
    out = feed(agent, phone.reply(invite, 200, body=OFFER), now)
    assert [type(e) for e in events(out)] == [CallAnswered]
    return call, phone


# --- inbound: the basic flow ---------------------------------------------------------------------


def test_invite_gets_100_at_once_then_incoming_call() -> None:
    agent = new_agent()
    phone = Phone()
    call, out = incoming(agent, phone)
    assert isinstance(out[0], Datagram) and out[0].addr == PEER
    trying = responses(out)
    assert [r.status for r in trying] == [100]
    assert trying[0].to_addr.tag is None
    assert trying[0].top_via.branch == phone.invite_branch
    assert trying[0].call_id == phone.call_id
    assert events(out) == [IncomingCall(call, OFFER)]
    assert call.direction == "inbound" and call.state == "new"
    assert call.remote_sdp == OFFER
    assert call.remote_tag == phone.tag and call.local_tag
    assert call in agent.calls


def test_retransmitted_invite_repeats_100_without_a_new_event() -> None:
    agent = new_agent()
    phone = Phone()
    invite = phone.invite()
    feed(agent, invite, 0.0)
    out = feed(agent, invite, 0.5)
    assert statuses(out) == [100] and events(out) == []
    assert len(agent.calls) == 1


def test_ringing_sends_180_with_to_tag_and_contact() -> None:
    agent = new_agent()
    call, _ = incoming(agent, Phone())
    agent.ringing(call, 0.1)
    (ringing,) = responses(agent.drain())
    assert ringing.status == 180
    assert ringing.to_addr.tag == call.local_tag
    assert ringing.headers.get("Contact") == agent.contact()
    assert call.state == "early"


def test_accept_sends_200_and_retransmits_until_ack() -> None:
    agent = new_agent()
    phone = Phone()
    call, _ = incoming(agent, phone)
    agent.accept(call, ANSWER, 0.0)
    out = agent.drain()
    (ok,) = responses(out)
    assert out[0].addr == PEER  # type: ignore[union-attr]
    assert ok.status == 200 and ok.body == ANSWER
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert ok.headers.get("Contact") == agent.contact() == "<sip:bot@192.0.2.1:5060>"
    assert ok.to_addr.tag == call.local_tag
    assert ok.top_via.branch == phone.invite_branch
    assert "INVITE" in (ok.headers.get("Allow") or "")
    assert call.state == "answered"
    timeline = run(agent, 12.0)
    sends = [(t, parse_message(o.data)) for t, o in timeline if isinstance(o, Datagram)]
    assert [t for t, _ in sends] == [0.5, 1.5, 3.5, 7.5, 11.5]  # T1 doubling, capped at T2
    assert all(m == ok for _, m in sends)
    phone.remote_tag = ok.to_addr.tag
    out = feed(agent, phone.ack(), 12.0)
    assert out == [CallConfirmed(call)]
    assert call.state == "confirmed"
    assert only(run(agent, 100.0)) == []
    assert_idle(agent, kept=1)
    # a retransmitted ACK is harmless
    assert feed(agent, phone.ack(), 101.0) == []


def test_accept_twice_or_after_end_is_a_no_op() -> None:
    agent = new_agent()
    call, _ = incoming(agent, Phone())
    agent.accept(call, ANSWER, 0.0)
    agent.drain()
    agent.accept(call, ANSWER, 0.1)
    agent.reject(call, 486, 0.1)
    assert agent.drain() == []


def test_bye_after_confirm_gets_200_and_ends_the_call_once() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    bye = phone.in_dialog("BYE")
    out = feed(agent, bye, 5.0)
    assert statuses(out) == [200]
    assert ended(out) == [CallEnded(call, "hangup", "caller hung up", None)]
    assert call.ended
    out = feed(agent, bye, 5.5)  # retransmitted BYE: the same 200, no new event
    assert statuses(out) == [200] and events(out) == []
    run(agent, 100.0)
    assert_idle(agent)


def test_no_ack_for_200_means_bye_and_failed() -> None:
    agent = new_agent()
    phone = Phone()
    call, _ = incoming(agent, phone)
    agent.accept(call, ANSWER, 0.0)
    agent.drain()
    timeline = run(agent, 32.0)
    oks = [
        t
        for t, o in timeline
        if isinstance(o, Datagram) and parse_message(o.data).headers.get("CSeq") == "1 INVITE"
    ]
    assert oks == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    byes = [(t, o) for t, o in timeline if isinstance(o, Datagram) and b"BYE sip:" in o.data[:10]]
    assert len(byes) == 1 and byes[0][0] == 32.0
    bye = parse_message(byes[0][1].data)
    assert isinstance(bye, SipRequest)
    assert byes[0][1].addr == PEER  # the caller's Contact
    assert bye.uri == "sip:alice@192.0.2.2:5062"
    assert bye.to_addr.tag == phone.tag and bye.from_addr.tag == call.local_tag
    assert ended(only(timeline)) == [CallEnded(call, "failed", "no ACK for our 200 OK", 408)]
    out = feed(agent, phone.reply(bye, 200), 32.1)
    assert out == []
    run(agent, 200.0)
    assert_idle(agent)


def test_late_invite_retransmission_after_200_gets_the_200_again() -> None:
    """Our 100 and 200 were lost; the caller retransmits its INVITE after the agent already
    dropped the (terminated) server transaction. It must see the 200 again, not 482."""
    agent = new_agent()
    phone = Phone()
    invite = phone.invite()
    feed(agent, invite, 0.0)
    (call,) = agent.calls
    agent.accept(call, ANSWER, 0.1)
    agent.drain()
    agent.tick(0.2)  # the server transaction is gone now
    agent.drain()
    out = feed(agent, invite, 0.3)
    assert statuses(out) == [200]
    assert events(out) == []
    assert not call.ended


# --- inbound: CANCEL -----------------------------------------------------------------------------


def test_cancel_before_answer() -> None:
    agent = new_agent()
    phone = Phone()
    call, _ = incoming(agent, phone)
    agent.ringing(call, 0.1)
    agent.drain()
    out = feed(agent, phone.cancel(), 1.0)
    by_method = {r.cseq[1]: r.status for r in responses(out)}
    assert by_method == {"CANCEL": 200, "INVITE": 487}
    terminated = next(r for r in responses(out) if r.status == 487)
    assert terminated.to_addr.tag == call.local_tag
    assert ended(out) == [CallEnded(call, "cancelled", "caller cancelled before answer", 487)]
    # the 487 is retransmitted until the ACK, which is absorbed
    timeline = run(agent, 2.0)
    assert statuses(only(timeline)) == [487]
    assert feed(agent, phone.ack_non_2xx(call.local_tag), 2.0) == []
    assert only(run(agent, 200.0)) == []
    agent.accept(call, ANSWER, 200.0)
    assert agent.drain() == []
    assert_idle(agent)


def test_cancel_after_answer_gets_200_and_no_487() -> None:
    agent = new_agent()
    phone = Phone()
    call, _ = incoming(agent, phone)
    agent.accept(call, ANSWER, 0.0)
    agent.drain()
    out = feed(agent, phone.cancel(), 0.1)
    assert statuses(out) == [200]
    assert responses(out)[0].cseq[1] == "CANCEL"
    assert events(out) == []
    assert not call.ended


def test_cancel_without_invite_gets_481() -> None:
    agent = new_agent()
    phone = Phone()
    phone.invite_seq, phone.invite_branch = 1, new_branch()
    assert statuses(feed(agent, phone.cancel(), 0.0)) == [481]


def test_retransmitted_cancel_gets_the_same_200() -> None:
    agent = new_agent()
    phone = Phone()
    _call, _ = incoming(agent, phone)
    cancel = phone.cancel()
    feed(agent, cancel, 0.1)
    out = feed(agent, cancel, 0.2)
    assert statuses(out) == [200] and events(out) == []


# --- inbound: in-dialog requests -----------------------------------------------------------------


def test_bye_for_unknown_dialog_gets_481() -> None:
    agent = new_agent()
    phone = Phone(remote_tag="nosuchtag")
    out = feed(agent, phone.in_dialog("BYE"), 0.0)
    assert statuses(out) == [481] and events(out) == []


def test_bye_with_wrong_from_tag_gets_481() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    stranger = Phone(call_id=phone.call_id, remote_tag=phone.remote_tag)
    out = feed(agent, stranger.in_dialog("BYE"), 1.0)
    assert statuses(out) == [481]
    assert not call.ended


def test_reinvite_hold_is_offered_and_answered() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    out = feed(agent, phone.reinvite(HOLD), 10.0)
    assert statuses(out) == [100]
    assert events(out) == [Reinvite(call, HOLD)]
    assert call.remote_sdp == HOLD
    agent.accept(call, ANSWER.replace(b"m=audio", b"a=recvonly\r\nm=audio"), 10.1)
    (ok,) = responses(agent.drain())
    assert ok.status == 200 and ok.cseq == (phone.invite_seq, "INVITE") and b"recvonly" in ok.body
    assert ok.to_addr.tag == call.local_tag
    assert statuses(only(run(agent, 10.7))) == [200]  # retransmitted until ACKed
    assert feed(agent, phone.ack(), 10.8) == []  # no second CallConfirmed
    assert call.state == "confirmed"
    assert only(run(agent, 100.0)) == []
    assert_idle(agent, kept=1)


def test_reinvite_while_one_is_pending_gets_491() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    feed(agent, phone.reinvite(), 1.0)
    out = feed(agent, phone.reinvite(), 1.1)
    assert statuses(out) == [491] and events(out) == []
    agent.accept(call, ANSWER, 1.2)
    agent.drain()
    out = feed(agent, phone.reinvite(), 1.3)  # our 200 not yet ACKed: still an offer in progress
    assert statuses(out) == [491]


def test_reinvite_with_unknown_to_tag_gets_481() -> None:
    agent = new_agent()
    phone = Phone()
    confirmed_inbound(agent, phone)
    phone.remote_tag = "unknown"
    out = feed(agent, phone.reinvite(), 1.0)
    assert statuses(out) == [481] and events(out) == []


def test_reinvite_with_old_cseq_gets_500_retry_after() -> None:
    agent = new_agent()
    phone = Phone()
    confirmed_inbound(agent, phone)
    phone.seq = 0
    out = feed(agent, phone.reinvite(), 1.0)
    (resp,) = responses(out)
    assert resp.status == 500 and resp.headers.get("Retry-After") == "1"


def test_ringing_for_a_reinvite_keeps_the_call_confirmed() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    feed(agent, phone.reinvite(), 1.0)
    agent.ringing(call, 1.1)
    assert statuses(agent.drain()) == [180]
    assert call.state == "confirmed"
    agent.hangup(call, 1.2)  # still a BYE, not a refusal that would leave the dialog up
    out = agent.drain()
    assert [r.method for r in requests(out)] == ["BYE"]
    assert ended(out) == [CallEnded(call, "hangup", "bot hung up", None)]


def test_reinvite_on_an_unanswered_outbound_call_gets_491() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    feed(agent, phone.reply(invite, 180), 0.1)
    phone.seq = 5
    out = feed(agent, phone.reinvite(), 0.2)
    assert statuses(out) == [491] and events(out) == []
    assert call.invite_tx is None
    feed(agent, phone.reply(invite, 486), 0.3)
    run(agent, 300.0)
    assert_idle(agent)


def test_reinvite_rejected_keeps_the_call() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    feed(agent, phone.reinvite(), 1.0)
    agent.reject(call, 488, 1.1)
    out = agent.drain()
    assert statuses(out) == [488] and events(out) == []
    assert feed(agent, phone.ack_non_2xx(call.local_tag), 1.2) == []
    assert call.state == "confirmed"
    assert only(run(agent, 100.0)) == []
    assert_idle(agent, kept=1)


def test_unanswered_reinvite_gets_500_and_call_survives() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    feed(agent, phone.reinvite(), 1.0)
    timeline = run(agent, 1.0 + INVITE_ANSWER_LIMIT)
    assert statuses(only(timeline)) == [500]
    assert not call.ended


def test_cancel_of_a_pending_reinvite_keeps_the_call() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    feed(agent, phone.reinvite(), 1.0)
    out = feed(agent, phone.cancel(), 1.1)
    assert sorted(statuses(out)) == [200, 487]
    assert ended(out) == []
    assert call.state == "confirmed"
    agent.accept(call, ANSWER, 1.2)  # too late: nothing to answer
    assert agent.drain() == []
    feed(agent, phone.ack_non_2xx(call.local_tag), 1.3)
    run(agent, 100.0)
    assert_idle(agent, kept=1)


def test_bye_during_pending_reinvite_ends_call_and_frees_everything() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    feed(agent, phone.reinvite(), 1.0)
    out = feed(agent, phone.in_dialog("BYE"), 1.1)
    assert sorted(statuses(out)) == [200, 487]
    assert len(ended(out)) == 1
    feed(agent, phone.ack_non_2xx(call.local_tag), 1.2)
    run(agent, 300.0)
    assert_idle(agent)


def test_hangup_during_pending_reinvite_answers_it_and_frees_everything() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    feed(agent, phone.reinvite(), 1.0)
    agent.hangup(call, 1.1)
    out = agent.drain()
    assert [r.method for r in requests(out)] == ["BYE"]
    assert len(ended(out)) == 1
    assert [s for s in statuses(out) if s >= 300]  # the re-INVITE got a final answer
    run(agent, 300.0)
    assert_idle(agent)


def test_reject_486_then_ack_is_absorbed() -> None:
    agent = new_agent()
    phone = Phone()
    invite = phone.invite()
    feed(agent, invite, 0.0)
    (call,) = agent.calls
    agent.reject(call, 486, 0.5)
    out = agent.drain()
    (busy,) = responses(out)
    assert busy.status == 486 and busy.to_addr.tag == call.local_tag
    assert ended(out) == [CallEnded(call, "rejected", "refused with 486", 486)]
    assert statuses(only(run(agent, 1.0))) == [486]  # timer G
    assert statuses(feed(agent, invite, 1.05)) == [486]  # a retransmitted INVITE: the 486 again
    assert feed(agent, phone.ack_non_2xx(call.local_tag), 1.1) == []
    assert feed(agent, invite, 1.2) == []  # confirmed: absorbed
    assert only(run(agent, 100.0)) == []
    assert_idle(agent)


def test_reject_with_extra_headers() -> None:
    agent = new_agent()
    call, _ = incoming(agent, Phone())
    agent.reject(call, 302, 0.0, headers=(("Contact", "<sip:other@example.com>"),))
    (moved,) = responses(agent.drain())
    assert moved.status == 302 and moved.headers.get("Contact") == "<sip:other@example.com>"


def test_invite_never_answered_gets_480() -> None:
    agent = new_agent()
    phone = Phone()
    call, _ = incoming(agent, phone)
    timeline = run(agent, INVITE_ANSWER_LIMIT)
    assert statuses(only(timeline)) == [480]
    assert ended(only(timeline)) == [CallEnded(call, "rejected", "refused with 480", 480)]
    feed(agent, phone.ack_non_2xx(call.local_tag), INVITE_ANSWER_LIMIT + 0.1)
    run(agent, 200.0)
    assert_idle(agent)


# --- inbound: out-of-dialog requests and validation ---------------------------------------------


def test_options_gets_200_with_allow() -> None:
    agent = new_agent()
    out = feed(agent, Phone().request("OPTIONS"), 0.0)
    (ok,) = responses(out)
    assert ok.status == 200
    assert ok.headers.get("Allow") == ALLOW
    assert ok.headers.get("Accept") == "application/sdp"
    assert ok.to_addr.tag
    assert events(out) == []


def test_options_with_max_forwards_zero_is_still_answered() -> None:
    agent = new_agent()
    data = Phone().request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert statuses(feed(agent, data, 0.0)) == [200]


@pytest.mark.parametrize("method", ["SUBSCRIBE", "MESSAGE", "PUBLISH", "UPDATE", "PRACK", "REGISTER", "FOO"])
def test_unknown_method_gets_405_with_allow(method: str) -> None:
    agent = new_agent()
    out = feed(agent, Phone().request(method), 0.0)
    (resp,) = responses(out)
    assert resp.status == 405 and resp.headers.get("Allow") == ALLOW
    assert resp.cseq[1] == method
    assert events(out) == []


@pytest.mark.parametrize("method", ["INVITE", "BYE", "INFO"])
def test_max_forwards_zero_gets_483(method: str) -> None:
    agent = new_agent()
    data = Phone().request(method, body=OFFER).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    out = feed(agent, data, 0.0)
    assert statuses(out) == [483] and events(out) == []
    assert agent.calls == []


def test_require_100rel_gets_420_with_unsupported() -> None:
    agent = new_agent()
    phone = Phone()
    out = feed(agent, phone.invite(headers=(("Require", "100rel, foo"),)), 0.0)
    (resp,) = responses(out)
    assert resp.status == 420
    assert resp.headers.get("Unsupported") == "100rel, foo"
    assert events(out) == [] and agent.calls == []
    # the 420 is a non-2xx final: ACK absorbed, transaction freed
    assert feed(agent, phone.ack_non_2xx(resp.to_addr.tag), 0.1) == []
    run(agent, 100.0)
    assert_idle(agent)


def test_require_timer_is_fine() -> None:
    agent = new_agent()
    incoming(agent, Phone(), headers=(("Require", "timer"),))


def test_non_sip_request_uri_gets_416() -> None:
    agent = new_agent()
    out = feed(agent, Phone().request("INVITE", uri="tel:+15551234", body=OFFER), 0.0)
    assert statuses(out) == [416]


def test_invite_without_contact_gets_400() -> None:
    agent = new_agent()
    out = feed(agent, Phone().invite(contact=False), 0.0)
    assert statuses(out) == [400] and agent.calls == []


def test_second_path_invite_gets_482() -> None:
    agent = new_agent()
    phone = Phone()
    incoming(agent, phone)
    phone.seq -= 1
    out = feed(agent, phone.invite(), 0.1)  # same Call-ID and From tag, another branch
    assert statuses(out) == [482]
    assert len(agent.calls) == 1


def test_info_dtmf_relay() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    body = b"Signal=5\r\nDuration=160\r\n"
    out = feed(agent, phone.in_dialog("INFO", body=body, content_type="application/dtmf-relay"), 1.0)
    assert statuses(out) == [200]
    assert events(out) == [DtmfInfo(call, "5")]
    out = feed(agent, phone.in_dialog("INFO", body=b"#", content_type="application/dtmf"), 1.1)
    assert events(out) == [DtmfInfo(call, "#")]
    out = feed(
        agent, phone.in_dialog("INFO", body=b"Signal=X\r\n", content_type="application/dtmf-relay"), 1.2
    )
    assert statuses(out) == [200] and events(out) == []
    out = feed(agent, phone.in_dialog("INFO", body=b"{}", content_type="application/json"), 1.3)
    assert statuses(out) == [200] and events(out) == []


def test_info_outside_a_dialog_gets_481() -> None:
    agent = new_agent()
    out = feed(
        agent,
        Phone(remote_tag="x").in_dialog("INFO", body=b"Signal=1", content_type="application/dtmf-relay"),
        0.0,
    )
    assert statuses(out) == [481] and events(out) == []


def test_refer_from_peer_is_refused() -> None:
    agent = new_agent()
    phone = Phone()
    call = confirmed_inbound(agent, phone)
    refer = phone.in_dialog("REFER", headers=(("Refer-To", "<sip:premium@evil.example>"),))
    out = feed(agent, refer, 1.0)
    assert statuses(out) == [403] and events(out) == []
    assert not call.ended
    out = feed(agent, Phone(remote_tag="x").in_dialog("REFER", headers=(("Refer-To", "<sip:a@b>"),)), 1.0)
    assert statuses(out) == [481]


def test_keepalive_is_ignored_and_garbage_is_malformed() -> None:
    agent = new_agent()
    assert feed(agent, b"\r\n\r\n", 0.0) == []
    out = feed(agent, b"NOT SIP AT ALL\r\n\r\n", 0.0)
    assert len(out) == 1 and isinstance(out[0], Malformed) and out[0].addr == PEER
    assert agent.stats["malformed"] == 1


# --- inbound: the INVITE gate ----------------------------------------------------------------------


def test_invite_gate_refusal_gets_503_retry_after() -> None:
    calls: list[tuple[tuple[str, int], float]] = []

    def gate(addr: tuple[str, int], now: float) -> bool:
        calls.append((addr, now))
        return False

    agent = new_agent(gate)
    phone = Phone()
    invite = phone.invite()
    out = feed(agent, invite, 0.0)
    (resp,) = responses(out)
    assert resp.status == 503 and resp.headers.get("Retry-After")
    assert events(out) == [] and agent.calls == []
    assert calls == [(PEER, 0.0)]
    out = feed(agent, invite, 0.5)  # a retransmission: the 503 again, no second gate check
    assert statuses(out) == [503]
    assert len(calls) == 1
    assert feed(agent, phone.ack_non_2xx(resp.to_addr.tag), 0.6) == []


def test_retransmitted_admitted_invite_does_not_spend_the_gate_again() -> None:
    spent: list[float] = []

    def gate(addr: tuple[str, int], now: float) -> bool:
        spent.append(now)
        return len(spent) <= 1

    agent = new_agent(gate)
    phone = Phone()
    invite = phone.invite()
    feed(agent, invite, 0.0)
    for t in (0.5, 1.5, 3.5):
        out = feed(agent, invite, t)
        assert statuses(out) == [100] and events(out) == []
    call = agent.calls[0]
    agent.accept(call, ANSWER, 4.0)
    agent.drain()
    agent.tick(4.1)
    agent.drain()
    assert statuses(feed(agent, invite, 4.2)) == [200]
    assert spent == [0.0]
    # a genuinely new call is gated
    out = feed(agent, Phone().invite(), 5.0)
    assert statuses(out) == [503]
    assert spent == [0.0, 5.0]


# --- hangup() at every moment ------------------------------------------------------------------


@pytest.mark.parametrize("state", ["new", "early", "answered", "confirmed"])
def test_inbound_hangup_in_every_state(state: str) -> None:
    agent = new_agent()
    phone = Phone()
    call, _ = incoming(agent, phone)
    if state == "early":
        agent.ringing(call, 0.0)
    if state in ("answered", "confirmed"):
        agent.accept(call, ANSWER, 0.0)
    if state == "confirmed":
        phone.remote_tag = call.local_tag
        agent.drain()
        feed(agent, phone.ack(), 0.1)
    agent.drain()
    assert call.state == state
    agent.hangup(call, 1.0)
    agent.hangup(call, 1.1)  # twice: no effect
    out = agent.drain()
    if state in ("new", "early"):
        assert statuses(out) == [480] and requests(out) == []
        assert ended(out) == [CallEnded(call, "rejected", "refused with 480", 480)]
        feed(agent, phone.ack_non_2xx(call.local_tag), 1.2)
    else:
        (bye,) = requests(out)
        assert bye.method == "BYE" and bye.uri == "sip:alice@192.0.2.2:5062"
        assert ended(out) == [CallEnded(call, "hangup", "bot hung up", None)]
        feed(agent, phone.reply(bye, 200), 1.2)
    timeline = run(agent, 300.0)
    assert ended(only(timeline)) == []
    assert not [m for m in msgs(only(timeline)) if isinstance(m, SipResponse) and m.status == 200]
    assert_idle(agent)


@pytest.mark.parametrize("state", ["new", "ringing", "confirmed"])
def test_outbound_hangup_in_every_state(state: str) -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    if state == "ringing":
        feed(agent, phone.reply(invite, 180), 0.1)
    if state == "confirmed":
        feed(agent, phone.reply(invite, 200, body=OFFER), 0.1)
    agent.hangup(call, 1.0)
    agent.hangup(call, 1.05)
    out = agent.drain()
    all_out = list(out)
    if state == "new":
        assert msgs(out) == [] and ended(out) == []  # the CANCEL waits for a provisional
        all_out += only(run(agent, 40.0))  # no answer at all: timer B
        assert ended(all_out) == [CallEnded(call, "failed", "no final response (timer B)", 408)]
    elif state == "ringing":
        cancels = [r for r in requests(out) if r.method == "CANCEL"]
        assert len(cancels) == 1
        all_out += feed(agent, phone.reply(cancels[0], 200), 1.1)
        all_out += feed(agent, phone.reply(invite, 487), 1.2)
        assert ended(all_out) == [CallEnded(call, "no-answer", "cancelled after no answer", 487)]
    else:
        (bye,) = requests(out)
        assert bye.method == "BYE"
        assert ended(out) == [CallEnded(call, "hangup", "bot hung up", None)]
        all_out += feed(agent, phone.reply(bye, 200), 1.1)
    all_out += only(run(agent, 300.0))
    assert len(ended(all_out)) == 1
    assert_idle(agent)


# --- outbound calls ----------------------------------------------------------------------------


def test_outbound_invite_is_well_formed() -> None:
    agent = new_agent()
    call, invite, _ = outbound(agent)
    assert invite.method == "INVITE" and invite.uri == "sip:alice@192.0.2.2:5062"
    assert invite.body == ANSWER and invite.headers.get("Content-Type") == "application/sdp"
    assert invite.cseq == (1, "INVITE")
    assert invite.from_addr.tag == call.local_tag and invite.to_addr.tag is None
    assert invite.call_id == call.call_id
    assert invite.headers.get("Contact") == agent.contact()
    assert invite.headers.get("Allow") == ALLOW
    assert (invite.top_via.branch or "").startswith("z9hG4bK")
    assert call.direction == "outbound" and call.state == "new"


def test_outbound_progress_answer_and_ack() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    assert feed(agent, phone.reply(invite, 100), 0.1) == []
    out = feed(agent, phone.reply(invite, 180), 0.2)
    assert out == [CallProgress(call, 180)]
    assert call.state == "early"
    ok = phone.reply(invite, 200, body=OFFER)
    out = feed(agent, ok, 1.0)
    (ack,) = requests(out)
    assert events(out) == [CallAnswered(call, OFFER)]
    assert ack.method == "ACK" and ack.cseq == (1, "ACK")
    assert ack.top_via.branch != invite.top_via.branch
    assert ack.to_addr.tag == phone.tag and ack.from_addr.tag == call.local_tag
    assert ack.uri == "sip:alice@192.0.2.2:5062"  # the callee's Contact
    assert out[0].addr == PEER  # type: ignore[union-attr]
    assert call.state == "confirmed" and call.remote_sdp == OFFER
    # a retransmitted 200: the same ACK again, no second event
    again = feed(agent, ok, 1.5)
    assert [type(o) for o in again] == [Datagram]
    assert again[0].data == out[0].data  # type: ignore[union-attr]
    assert only(run(agent, 100.0)) == []
    assert_idle(agent, kept=1)


def test_outbound_183_is_progress() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    assert feed(agent, phone.reply(invite, 183, body=OFFER), 0.1) == [CallProgress(call, 183)]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (486, "busy"),
        (600, "busy"),
        (603, "rejected"),
        (404, "rejected"),
        (403, "rejected"),
        (503, "failed"),
        (500, "failed"),
        (480, "no-answer"),
        (408, "no-answer"),
        (302, "rejected"),
    ],
)
def test_outbound_final_failures(status: int, outcome: str) -> None:
    agent = new_agent()
    _call, invite, phone = outbound(agent)
    feed(agent, phone.reply(invite, 180), 0.1)
    final = phone.reply(invite, status)
    out = feed(agent, final, 1.0)
    (ack,) = requests(out)
    assert ack.method == "ACK" and ack.top_via.branch == invite.top_via.branch
    assert ack.cseq == (1, "ACK") and ack.to_addr.tag == phone.tag
    (end,) = ended(out)
    assert (end.outcome, end.status) == (outcome, status)
    again = feed(agent, final, 1.5)  # retransmitted final: ACK again, no event
    assert [r.method for r in requests(again)] == ["ACK"] and events(again) == []
    run(agent, 200.0)
    assert_idle(agent)


def test_outbound_hangup_before_provisional_defers_cancel_until_180() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    agent.hangup(call, 0.1)
    assert agent.drain() == []
    out = feed(agent, phone.reply(invite, 180), 0.3)
    (cancel,) = requests(out)
    assert events(out) == []  # no progress shown for a call we gave up on
    assert cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.cseq == (1, "CANCEL")
    assert cancel.uri == invite.uri
    assert cancel.to_addr.tag is None and cancel.from_addr.tag == call.local_tag
    assert feed(agent, phone.reply(cancel, 200), 0.4) == []
    out = feed(agent, phone.reply(invite, 487), 0.5)
    assert [r.method for r in requests(out)] == ["ACK"]
    assert ended(out) == [CallEnded(call, "no-answer", "cancelled after no answer", 487)]


def test_outbound_hangup_before_provisional_then_100() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    agent.hangup(call, 0.1)
    out = feed(agent, phone.reply(invite, 100), 0.2)
    assert [r.method for r in requests(out)] == ["CANCEL"]


def test_outbound_answered_after_hangup_is_acked_and_byed() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    agent.hangup(call, 0.1)
    out = feed(agent, phone.reply(invite, 200, body=OFFER), 0.2)
    assert [r.method for r in requests(out)] == ["ACK", "BYE"]
    assert ended(out) == [CallEnded(call, "no-answer", "answered after we gave up", 200)]
    bye = requests(out)[1]
    feed(agent, phone.reply(bye, 200), 0.3)
    run(agent, 200.0)
    assert_idle(agent)


def test_outbound_answered_after_cancel_is_acked_and_byed() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    feed(agent, phone.reply(invite, 180), 0.1)
    agent.hangup(call, 0.2)
    agent.drain()
    out = feed(agent, phone.reply(invite, 200, body=OFFER), 0.3)  # the 200 crossed our CANCEL
    assert [r.method for r in requests(out)] == ["ACK", "BYE"]
    assert len(ended(out)) == 1


def test_outbound_timer_b_without_provisional_is_failed() -> None:
    agent = new_agent()
    call, invite, _ = outbound(agent)
    timeline = run(agent, 40.0)
    sends = [t for t, o in timeline if isinstance(o, Datagram)]
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(parse_message(o.data) == invite for _, o in timeline if isinstance(o, Datagram))
    ends = [(t, e) for t, e in timeline if isinstance(e, CallEnded)]
    assert ends == [(32.0, CallEnded(call, "failed", "no final response (timer B)", 408))]
    assert_idle(agent)


def test_outbound_timer_b_after_ringing_is_no_answer_and_cancels() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent)
    feed(agent, phone.reply(invite, 180), 0.1)
    timeline = run(agent, 40.0)
    ends = [(t, e) for t, e in timeline if isinstance(e, CallEnded)]
    assert ends == [(32.0, CallEnded(call, "no-answer", "no final response (timer B)", 408))]
    # the callee is told to stop ringing
    sent = [m for t, m in ((t, parse_message(o.data)) for t, o in timeline if isinstance(o, Datagram))]
    assert [m.method for m in sent if isinstance(m, SipRequest)][:1] == ["CANCEL"]
    run(agent, 300.0)
    assert_idle(agent)


@pytest.mark.parametrize(("status", "header"), [(401, "Authorization"), (407, "Proxy-Authorization")])
def test_outbound_digest_auth(status: int, header: str) -> None:
    agent = new_agent()
    creds = Credentials("alice", "s3cret")
    call, invite, phone = outbound(agent, credentials=creds)
    challenge_header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    challenge = 'Digest realm="example.com", nonce="n0nce", qop="auth", algorithm=MD5'
    out = feed(agent, phone.reply(invite, status, headers=((challenge_header, challenge),)), 0.2)
    ack, retry = requests(out)
    assert events(out) == []
    assert ack.method == "ACK" and ack.top_via.branch == invite.top_via.branch
    assert retry.method == "INVITE" and retry.cseq == (2, "INVITE")
    assert retry.top_via.branch != invite.top_via.branch
    assert retry.call_id == invite.call_id and retry.from_addr.tag == invite.from_addr.tag
    assert retry.body == invite.body
    value = retry.headers.get(header)
    assert value is not None
    assert check_authorization(value, "INVITE", "s3cret", "example.com", "n0nce")
    assert not check_authorization(value, "INVITE", "wrong", "example.com", "n0nce")
    assert 'username="alice"' in value and f'uri="{retry.uri}"' in value
    # then the call goes through
    out = feed(agent, phone.reply(retry, 200, body=OFFER), 0.5)
    assert events(out) == [CallAnswered(call, OFFER)]
    assert requests(out)[0].cseq == (2, "ACK")
    # a hangup now is a BYE with the next CSeq
    agent.hangup(call, 1.0)
    (bye,) = requests(agent.drain())
    assert bye.cseq == (3, "BYE")


def test_outbound_second_challenge_fails() -> None:
    agent = new_agent()
    _call, invite, phone = outbound(agent, credentials=Credentials("alice", "bad"))
    challenge = (("WWW-Authenticate", 'Digest realm="r", nonce="n"'),)
    out = feed(agent, phone.reply(invite, 401, headers=challenge), 0.1)
    retry = requests(out)[1]
    out = feed(agent, phone.reply(retry, 401, headers=challenge), 0.2)
    assert [r.method for r in requests(out)] == ["ACK"]
    assert [(e.outcome, e.status) for e in ended(out)] == [("failed", 401)]


def test_outbound_challenge_without_credentials_fails() -> None:
    agent = new_agent()
    _call, invite, phone = outbound(agent)
    out = feed(
        agent, phone.reply(invite, 407, headers=(("Proxy-Authenticate", 'Digest realm="r", nonce="n"'),)), 0.1
    )
    assert [r.method for r in requests(out)] == ["ACK"]
    assert [(e.outcome, e.status) for e in ended(out)] == [("failed", 407)]


def test_outbound_bye_from_callee() -> None:
    agent = new_agent()
    call, phone = confirmed_outbound(agent)
    out = feed(agent, phone.in_dialog("BYE", uri="sip:bot@192.0.2.1:5060"), 5.0)
    assert statuses(out) == [200]
    assert ended(out) == [CallEnded(call, "hangup", "caller hung up", None)]


def test_outbound_callee_reinvite() -> None:
    agent = new_agent()
    call, phone = confirmed_outbound(agent)
    phone.seq = 5
    out = feed(agent, phone.reinvite(HOLD), 5.0)
    assert events(out) == [Reinvite(call, HOLD)]
    agent.accept(call, ANSWER, 5.1)
    assert statuses(agent.drain()) == [200]
    assert feed(agent, phone.ack(), 5.2) == []
    run(agent, 100.0)
    assert_idle(agent, kept=1)


# --- REFER (blind transfer) ------------------------------------------------------------------------


def test_refer_flow_with_notify() -> None:
    agent = new_agent()
    call, phone = confirmed_outbound(agent)
    agent.refer(call, "sip:transfer@example.com", 2.0)
    out = agent.drain()
    (refer,) = requests(out)
    assert refer.method == "REFER" and refer.cseq == (2, "REFER")
    assert refer.headers.get("Refer-To") == "<sip:transfer@example.com>"
    assert refer.headers.get("Referred-By") == "<sip:bot@192.0.2.1:5060>"
    assert refer.to_addr.tag == phone.tag
    assert feed(agent, phone.reply(refer, 202), 2.1) == [TransferUpdate(call, 202, False)]
    frag = {"Event": "refer", "Subscription-State": "active;expires=60"}
    notify = phone.in_dialog(
        "NOTIFY", body=b"SIP/2.0 100 Trying\r\n", content_type="message/sipfrag", headers=frag.items()
    )
    out = feed(agent, notify, 2.2)
    assert statuses(out) == [200]
    assert events(out) == [TransferUpdate(call, 100, False)]
    frag = {"Event": "refer", "Subscription-State": "terminated;reason=noresource"}
    notify = phone.in_dialog(
        "NOTIFY", body=b"SIP/2.0 200 OK\r\n", content_type="message/sipfrag", headers=frag.items()
    )
    out = feed(agent, notify, 3.0)
    assert statuses(out) == [200]
    assert events(out) == [TransferUpdate(call, 200, True)]
    assert not call.refer_pending


def test_notify_terminated_without_sipfrag_ends_the_transfer() -> None:
    agent = new_agent()
    call, phone = confirmed_outbound(agent)
    agent.refer(call, "sip:transfer@example.com", 2.0)
    refer = requests(agent.drain())[0]
    feed(agent, phone.reply(refer, 202), 2.1)
    headers = (("Event", "refer"), ("Subscription-State", "terminated"))
    out = feed(agent, phone.in_dialog("NOTIFY", headers=headers), 2.2)
    assert events(out) == [TransferUpdate(call, 500, True)]


def test_notify_outside_dialog_gets_481() -> None:
    agent = new_agent()
    out = feed(agent, Phone(remote_tag="x").in_dialog("NOTIFY", headers=(("Event", "refer"),)), 0.0)
    assert statuses(out) == [481]


@pytest.mark.parametrize("status", [403, 501, 488])
def test_refer_rejected(status: int) -> None:
    agent = new_agent()
    call, phone = confirmed_outbound(agent)
    agent.refer(call, "sip:transfer@example.com", 2.0)
    refer = requests(agent.drain())[0]
    out = feed(agent, phone.reply(refer, status), 2.1)
    assert out == [TransferUpdate(call, status, True)]
    assert not call.ended


def test_refer_timeout() -> None:
    agent = new_agent()
    call, _phone = confirmed_outbound(agent)
    agent.refer(call, "sip:transfer@example.com", 2.0)
    refer_data = agent.drain()[0].data  # type: ignore[union-attr]
    timeline = run(agent, 40.0)
    sends = [t for t, o in timeline if isinstance(o, Datagram)]
    assert sends == [2.5, 3.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5, 33.5]
    assert all(o.data == refer_data for _, o in timeline if isinstance(o, Datagram))
    assert [(t, e) for t, e in timeline if not isinstance(e, Datagram)] == [
        (34.0, TransferUpdate(call, 408, True))
    ]
    assert not call.ended


def test_refer_before_confirmed_is_refused_locally() -> None:
    agent = new_agent()
    call, _, _ = outbound(agent)
    agent.refer(call, "sip:x@example.com", 0.1)
    assert agent.drain() == [TransferUpdate(call, 481, True)]


def test_refer_with_auth_challenge_is_retried() -> None:
    agent = new_agent()
    call, invite, phone = outbound(agent, credentials=Credentials("u", "p"))
    feed(agent, phone.reply(invite, 200, body=OFFER), 0.1)
    agent.refer(call, "sip:t@example.com", 1.0)
    refer = requests(agent.drain())[0]
    out = feed(
        agent, phone.reply(refer, 407, headers=(("Proxy-Authenticate", 'Digest realm="r", nonce="n"'),)), 1.1
    )
    (retry,) = requests(out)
    assert retry.method == "REFER" and retry.cseq[0] == refer.cseq[0] + 1
    assert check_authorization(retry.headers.get("Proxy-Authorization") or "", "REFER", "p", "r", "n")
    assert events(out) == []


# --- two agents in memory ----------------------------------------------------------------------


ALICE = ("192.0.2.20", 5070)


class Net:
    """Routes datagrams between agents; ``drop`` decides which ones the network loses."""

    def __init__(self, *agents: SipAgent, drop: Callable[[SipMessage], bool] | None = None) -> None:
        self.agents = {(a.config.host, a.config.port): a for a in agents}
        self.events: dict[tuple[str, int], list[Output]] = {addr: [] for addr in self.agents}
        self.wire: list[tuple[float, tuple[str, int], SipMessage]] = []
        self.drop = drop
        self.now = 0.0

    def flush(self) -> None:
        for _ in range(1000):
            moved = False
            for src, agent in self.agents.items():
                for out in agent.drain():
                    if not isinstance(out, Datagram):
                        self.events[src].append(out)
                        continue
                    moved = True
                    msg = parse_message(out.data)
                    self.wire.append((self.now, src, msg))
                    dst = self.agents.get(out.addr)
                    if dst is not None and not (self.drop and self.drop(msg)):
                        dst.receive(out.data, src, self.now)
            if not moved:
                return
        raise AssertionError("message storm")

    def advance(self, until: float) -> None:
        self.flush()
        for _ in range(10_000):
            deadlines = [d for a in self.agents.values() if (d := a.next_deadline()) is not None]
            if not deadlines or min(deadlines) > until:
                break
            self.now = max(self.now, min(deadlines))
            for agent in self.agents.values():
                agent.tick(self.now)
            self.flush()
        self.now = until
        for agent in self.agents.values():
            agent.tick(until)
        self.flush()

    def of(self, addr: tuple[str, int], kind: type) -> list:
        return [e for e in self.events[addr] if isinstance(e, kind)]


def two_agents(drop: Callable[[SipMessage], bool] | None = None) -> tuple[SipAgent, SipAgent, Net]:
    bot = new_agent()
    alice = new_agent(addr=ALICE)
    return bot, alice, Net(bot, alice, drop=drop)


def test_two_agents_call_confirm_and_bot_hangs_up() -> None:
    bot, alice, net = two_agents()
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    (incoming_event,) = net.of(BOT, IncomingCall)
    in_call = incoming_event.call
    bot.ringing(in_call, 0.1)
    net.flush()
    assert net.of(ALICE, CallProgress) == [CallProgress(out_call, 180)]
    bot.accept(in_call, ANSWER, 0.2)
    net.flush()
    assert net.of(ALICE, CallAnswered) == [CallAnswered(out_call, ANSWER)]
    assert net.of(BOT, CallConfirmed) == [CallConfirmed(in_call)]
    assert in_call.state == out_call.state == "confirmed"
    assert in_call.call_id == out_call.call_id
    assert in_call.local_tag == out_call.remote_tag and in_call.remote_tag == out_call.local_tag
    bot.hangup(in_call, 5.0)
    net.advance(300.0)
    assert net.of(BOT, CallEnded) == [CallEnded(in_call, "hangup", "bot hung up", None)]
    assert net.of(ALICE, CallEnded) == [CallEnded(out_call, "hangup", "caller hung up", None)]
    assert_idle(bot)
    assert_idle(alice)


def test_two_agents_caller_hangs_up() -> None:
    bot, alice, net = two_agents()
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    in_call = net.of(BOT, IncomingCall)[0].call
    bot.accept(in_call, ANSWER, 0.1)
    net.flush()
    alice.hangup(out_call, 3.0)
    net.advance(300.0)
    assert [e.outcome for e in net.of(BOT, CallEnded)] == ["hangup"]
    assert [e.outcome for e in net.of(ALICE, CallEnded)] == ["hangup"]
    assert_idle(bot)
    assert_idle(alice)


def test_two_agents_lost_200_is_retransmitted() -> None:
    lost: list[SipMessage] = []

    def drop(msg: SipMessage) -> bool:
        if isinstance(msg, SipResponse) and msg.status == 200 and not lost:
            lost.append(msg)
            return True
        return False

    bot, alice, net = two_agents(drop)
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    in_call = net.of(BOT, IncomingCall)[0].call
    bot.accept(in_call, ANSWER, 0.1)
    net.flush()
    assert net.of(ALICE, CallAnswered) == []
    net.advance(1.0)
    assert net.of(ALICE, CallAnswered) == [CallAnswered(out_call, ANSWER)]
    assert net.of(BOT, CallConfirmed) == [CallConfirmed(in_call)]
    net.advance(100.0)
    assert_idle(bot, kept=1)
    assert_idle(alice, kept=1)


def test_two_agents_lost_ack_is_resent_on_200_retransmission() -> None:
    dropped: list[SipMessage] = []

    def drop(msg: SipMessage) -> bool:
        if isinstance(msg, SipRequest) and msg.method == "ACK" and len(dropped) < 2:
            dropped.append(msg)
            return True
        return False

    bot, alice, net = two_agents(drop)
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    in_call = net.of(BOT, IncomingCall)[0].call
    bot.accept(in_call, ANSWER, 0.1)
    net.advance(5.0)
    assert len(dropped) == 2
    assert net.of(BOT, CallConfirmed) == [CallConfirmed(in_call)]
    assert net.of(ALICE, CallAnswered) == [CallAnswered(out_call, ANSWER)]
    net.advance(100.0)
    assert net.of(BOT, CallEnded) == []
    assert_idle(bot, kept=1)


def test_two_agents_lost_100_and_200_still_connect() -> None:
    def drop(msg: SipMessage) -> bool:
        return isinstance(msg, SipResponse) and msg.status in (100, 200) and net.now < 0.6

    bot, alice, net = two_agents(drop)
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    in_call = net.of(BOT, IncomingCall)[0].call
    bot.accept(in_call, ANSWER, 0.0)
    net.advance(60.0)
    assert net.of(ALICE, CallAnswered) == [CallAnswered(out_call, ANSWER)]
    assert net.of(BOT, CallConfirmed) == [CallConfirmed(in_call)]
    assert net.of(BOT, CallEnded) == net.of(ALICE, CallEnded) == []


def test_two_agents_cancel() -> None:
    bot, alice, net = two_agents()
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    in_call = net.of(BOT, IncomingCall)[0].call
    bot.ringing(in_call, 0.1)
    net.flush()
    alice.hangup(out_call, 1.0)
    net.advance(300.0)
    assert [(e.outcome, e.status) for e in net.of(BOT, CallEnded)] == [("cancelled", 487)]
    assert [(e.outcome, e.status) for e in net.of(ALICE, CallEnded)] == [("no-answer", 487)]
    assert_idle(bot)
    assert_idle(alice)


@pytest.mark.parametrize(("status", "outcome"), [(486, "busy"), (603, "rejected"), (503, "failed")])
def test_two_agents_reject(status: int, outcome: str) -> None:
    bot, alice, net = two_agents()
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    in_call = net.of(BOT, IncomingCall)[0].call
    bot.reject(in_call, status, 0.1)
    net.advance(300.0)
    assert [e.outcome for e in net.of(ALICE, CallEnded)] == [outcome]
    assert [e.status for e in net.of(BOT, CallEnded)] == [status]
    # the 4xx was ACKed once and never retransmitted
    finals = [m for _, src, m in net.wire if isinstance(m, SipResponse) and m.status == status]
    assert len(finals) == 1
    assert_idle(bot)
    assert_idle(alice)
    assert out_call.ended


def test_two_agents_refer_is_refused_by_the_bot() -> None:
    bot, alice, net = two_agents()
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)
    net.flush()
    bot.accept(net.of(BOT, IncomingCall)[0].call, ANSWER, 0.1)
    net.flush()
    alice.refer(out_call, "sip:elsewhere@example.com", 1.0)
    net.flush()
    assert net.of(ALICE, TransferUpdate) == [TransferUpdate(out_call, 403, True)]


@pytest.mark.parametrize("when", [0.0, 0.05, 0.15, 0.25, 0.6, 1.0, 5.0, 31.9, 32.0, 40.0])
@pytest.mark.parametrize("who", ["bot", "alice"])
@pytest.mark.parametrize("lossy", [False, True])
def test_two_agents_either_side_hangs_up_at_any_moment(when: float, who: str, lossy: bool) -> None:
    """The bot rings at 0.1 and answers at 0.2; one side hangs up at ``when``. Each side sees at
    most one CallEnded, both see exactly one once anything was set up, and nothing leaks."""
    counter = iter(range(1_000_000))

    def drop(msg: SipMessage) -> bool:
        return lossy and next(counter) % 3 == 1

    bot, alice, net = two_agents(drop)
    out_call = alice.invite(BOT_URI, OFFER, 0.0, dest=BOT)

    def in_call() -> SipCall | None:
        found = net.of(BOT, IncomingCall)
        return found[0].call if found else None

    def ring() -> None:
        if (c := in_call()) is not None:
            bot.ringing(c, net.now)

    def answer() -> None:
        if (c := in_call()) is not None:
            bot.accept(c, ANSWER, net.now)

    def hang() -> None:
        if who == "alice":
            alice.hangup(out_call, net.now)
        elif (c := in_call()) is not None:
            bot.hangup(c, net.now)

    script = sorted([(0.1, ring), (0.2, answer), (when, hang)], key=lambda item: item[0])
    for t, action in script:
        net.advance(t)
        action()
    net.advance(400.0)
    alice_ends = net.of(ALICE, CallEnded)
    bot_ends = net.of(BOT, CallEnded)
    assert len(alice_ends) == 1, alice_ends
    assert len(bot_ends) <= 1
    if in_call() is not None:
        assert len(bot_ends) == 1, (bot_ends, in_call())
    assert_idle(bot)
    assert_idle(alice)


def test_max_transactions_overload_gets_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "MAX_TRANSACTIONS", 3)
    agent = new_agent()
    for _ in range(3):
        feed(agent, Phone().request("OPTIONS"), 0.0)
    out = feed(agent, Phone().request("OPTIONS"), 0.0)
    assert statuses(out) == [503] and agent.stats["overload"] == 1
    run(agent, 100.0)
    assert statuses(feed(agent, Phone().request("OPTIONS"), 100.0)) == [200]
