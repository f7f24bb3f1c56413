"""RFC 3261 section 17 transactions, driven with a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

import itertools

import pytest

from telephony.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    parse_message,
    serialize,
)
from telephony.sip.transaction import (
    T1,
    T2,
    T4,
    ClientTransaction,
    ServerTransaction,
    Timers,
    client_key,
    non_2xx_ack,
    server_key,
)

ADDR = ("192.0.2.10", 5060)


def request(method: str, *, branch: str | None = None, seq: int = 1) -> SipRequest:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch or new_branch()}")
    headers.add("Route", "<sip:proxy.example.com;lr>")
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:bot@192.0.2.1>;tag=from1")
    headers.add("To", "<sip:alice@example.com>")
    headers.add("Call-ID", "call-1@192.0.2.1")
    headers.add("CSeq", f"{seq} {method}")
    return SipRequest(method, "sip:alice@example.com", headers)


def response(req: SipRequest, status: int, to_tag: str | None = "totag") -> SipResponse:
    return make_response(req, status, to_tag=to_tag if status > 100 else None)


def run_timers(tx: ClientTransaction | ServerTransaction, until: float) -> list[tuple[float, bytes]]:
    """Jump from deadline to deadline up to ``until``; returns (time, datagram) for each send."""
    sent: list[tuple[float, bytes]] = []
    while True:
        deadline = tx.next_deadline()
        if deadline is None or deadline > until or tx.state == "terminated":
            return sent
        sent += [(deadline, data) for data in tx.on_timer(deadline)]


# --- keys and helpers ------------------------------------------------------------------------


def test_keys_put_ack_with_its_invite_and_cancel_apart() -> None:
    assert client_key("z9hG4bKa", "ACK") == client_key("z9hG4bKa", "INVITE")
    assert client_key("z9hG4bKa", "CANCEL") != client_key("z9hG4bKa", "INVITE")
    assert server_key("z9hG4bKa", "h:5060", "ACK") == server_key("z9hG4bKa", "h:5060", "INVITE")
    assert server_key("z9hG4bKa", "h:5060", "BYE") != server_key("z9hG4bKa", "h:5061", "BYE")


def test_timers_defaults() -> None:
    timers = Timers()
    assert (timers.t1, timers.t2, timers.t4) == (T1, T2, T4) == (0.5, 4.0, 5.0)
    assert timers.timeout == 32.0
    assert Timers(t1=0.1).timeout == pytest.approx(6.4)


def test_non_2xx_ack_reuses_the_invite_branch_and_takes_the_response_to() -> None:
    invite = request("INVITE", seq=7)
    resp = response(invite, 486, to_tag="xyz")
    ack = non_2xx_ack(invite, resp)
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.cseq == (7, "ACK")
    assert ack.to_addr.tag == "xyz"
    assert ack.from_addr.tag == "from1"
    assert ack.call_id == invite.call_id
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    assert not ack.body
    parsed = parse_message(serialize(ack))
    assert isinstance(parsed, SipRequest) and parsed.method == "ACK"


# --- client INVITE: timers A, B, D -----------------------------------------------------------


def test_client_invite_timer_a_doubles_until_timer_b() -> None:
    invite = request("INVITE")
    tx = ClientTransaction(invite, ADDR, Timers())
    first = tx.start(0.0)
    parsed = parse_message(first)
    assert isinstance(parsed, SipRequest) and parsed.method == "INVITE"
    assert parsed.top_via.branch == invite.top_via.branch
    sent = run_timers(tx, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(data == first for _, data in sent)
    assert tx.state == "terminated" and tx.timed_out
    assert tx.final is None


def test_client_invite_provisional_stops_timer_a_but_not_b() -> None:
    invite = request("INVITE")
    tx = ClientTransaction(invite, ADDR, Timers())
    tx.start(0.0)
    assert tx.on_timer(0.5)  # one retransmission
    out, deliver = tx.on_response(response(invite, 100), 0.7)
    assert out == [] and deliver and tx.state == "proceeding"
    out, deliver = tx.on_response(response(invite, 180), 1.0)
    assert deliver
    assert run_timers(tx, 31.9) == []
    assert tx.next_deadline() == 32.0
    assert tx.on_timer(32.0) == []
    assert tx.state == "terminated" and tx.timed_out


def test_client_invite_2xx_terminates_and_leaves_the_ack_to_the_dialog() -> None:
    invite = request("INVITE")
    tx = ClientTransaction(invite, ADDR, Timers())
    tx.start(0.0)
    out, deliver = tx.on_response(response(invite, 200), 1.0)
    assert out == [] and deliver
    assert tx.state == "terminated" and not tx.timed_out
    assert tx.next_deadline() is None
    assert tx.on_response(response(invite, 200), 1.5) == ([], False)


def test_client_invite_non_2xx_acks_once_resends_on_retransmission_and_ends_by_timer_d() -> None:
    invite = request("INVITE")
    tx = ClientTransaction(invite, ADDR, Timers())
    tx.start(0.0)
    tx.on_response(response(invite, 180), 0.2)
    final = response(invite, 486)
    out, deliver = tx.on_response(final, 2.0)
    assert deliver and tx.state == "completed" and tx.final is final
    assert len(out) == 1
    ack = parse_message(out[0])
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.cseq == (invite.cseq[0], "ACK")
    assert ack.to_addr.tag == "totag"
    # a retransmitted final: the same ACK again, the TU does not see it
    assert tx.on_response(final, 3.0) == (out, False)
    assert tx.on_response(response(invite, 180), 3.0) == (out, False)
    assert tx.next_deadline() == 34.0  # timer D: 32 s
    assert run_timers(tx, 33.9) == []
    tx.on_timer(34.0)
    assert tx.state == "terminated" and not tx.timed_out


# --- client non-INVITE: timers E, F, K -------------------------------------------------------


def test_client_non_invite_timer_e_caps_at_t2_and_f_fires_at_32s() -> None:
    bye = request("BYE")
    tx = ClientTransaction(bye, ADDR, Timers())
    tx.start(0.0)
    assert tx.state == "trying"
    sent = run_timers(tx, 100.0)
    times = [t for t, _ in sent]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == T2
    assert tx.state == "terminated" and tx.timed_out


def test_client_non_invite_provisional_moves_timer_e_to_t2() -> None:
    bye = request("BYE")
    tx = ClientTransaction(bye, ADDR, Timers())
    tx.start(0.0)
    assert tx.on_response(response(bye, 100), 0.1) == ([], True)
    assert tx.state == "proceeding"
    sent = run_timers(tx, 10.0)
    assert [t for t, _ in sent] == [0.5, 4.5, 8.5]


def test_client_non_invite_final_then_timer_k_absorbs_retransmissions() -> None:
    options = request("OPTIONS")
    tx = ClientTransaction(options, ADDR, Timers())
    tx.start(0.0)
    ok = response(options, 200)
    assert tx.on_response(ok, 0.2) == ([], True)
    assert tx.state == "completed" and tx.final is ok
    assert tx.on_response(ok, 0.3) == ([], False)
    assert tx.next_deadline() == pytest.approx(0.2 + T4)
    assert run_timers(tx, 100.0) == []
    assert tx.state == "terminated" and not tx.timed_out
    assert tx.on_response(ok, 6.0) == ([], False)


# --- server INVITE: timers G, H, I -----------------------------------------------------------


def test_server_invite_non_2xx_is_retransmitted_by_timer_g_until_ack() -> None:
    invite = request("INVITE")
    tx = ServerTransaction(invite, ADDR, Timers())
    trying = tx.respond(response(invite, 100), 0.0)
    assert tx.on_retransmission() == [trying]
    busy = tx.respond(response(invite, 486), 0.0)
    assert tx.state == "completed" and tx.final_status == 486
    sent = run_timers(tx, 10.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5]
    assert all(data == busy for _, data in sent)
    # a retransmitted INVITE gets the final again
    assert tx.on_retransmission() == [busy]
    tx.on_ack(10.0)
    assert tx.state == "confirmed"
    assert tx.on_retransmission() == []  # absorbed
    assert tx.next_deadline() == pytest.approx(10.0 + T4)  # timer I
    assert run_timers(tx, 100.0) == []
    assert tx.state == "terminated" and not tx.ack_timed_out


def test_server_invite_timer_h_gives_up_after_32s() -> None:
    invite = request("INVITE")
    tx = ServerTransaction(invite, ADDR, Timers())
    tx.respond(response(invite, 603), 1.0)
    sent = run_timers(tx, 100.0)
    times = [t for t, _ in sent]
    assert times == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert tx.state == "terminated" and tx.ack_timed_out


def test_server_invite_2xx_is_left_to_the_dialog() -> None:
    invite = request("INVITE")
    tx = ServerTransaction(invite, ADDR, Timers())
    ok = tx.respond(response(invite, 200), 0.0)
    assert tx.state == "terminated" and tx.final_status == 200
    assert tx.next_deadline() is None
    assert tx.on_retransmission() == [ok]  # until the agent forgets it


def test_server_late_response_is_sent_but_does_not_change_state() -> None:
    invite = request("INVITE")
    tx = ServerTransaction(invite, ADDR, Timers())
    busy = tx.respond(response(invite, 486), 0.0)
    late = tx.respond(response(invite, 200), 0.1)
    assert parse_message(late).status == 200  # type: ignore[union-attr]
    assert tx.final_status == 486 and tx.last == busy and tx.state == "completed"


# --- server non-INVITE: timer J ----------------------------------------------------------------


def test_server_non_invite_keeps_the_final_for_retransmissions_until_timer_j() -> None:
    bye = request("BYE")
    tx = ServerTransaction(bye, ADDR, Timers())
    assert tx.on_retransmission() == []
    ok = tx.respond(response(bye, 200), 0.0)
    assert tx.state == "completed"
    assert tx.on_retransmission() == [ok]
    assert tx.on_retransmission() == [ok]
    assert run_timers(tx, 31.9) == []  # no retransmissions of a non-INVITE final
    assert tx.next_deadline() == 32.0
    tx.on_timer(32.0)
    assert tx.state == "terminated"


@pytest.mark.parametrize("t1", [0.1, 0.5, 1.0])
def test_custom_t1_scales_every_timer(t1: float) -> None:
    timers = Timers(t1=t1, t2=8 * t1)
    invite = request("INVITE")
    tx = ClientTransaction(invite, ADDR, timers)
    tx.start(0.0)
    sent = run_timers(tx, 1000.0)
    assert sent[0][0] == pytest.approx(t1)
    assert tx.timed_out and len(sent) == 6
    bye = request("BYE")
    ntx = ClientTransaction(bye, ADDR, timers)
    ntx.start(0.0)
    sent = run_timers(ntx, 1000.0)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(sent)]
    assert max(gaps) == pytest.approx(8 * t1)


def test_response_datagrams_parse() -> None:
    invite = request("INVITE")
    tx = ServerTransaction(invite, ADDR, Timers())
    data = tx.respond(response(invite, 404), 0.0)
    parsed = parse_message(data)
    assert isinstance(parsed, SipResponse) and parsed.status == 404
    assert parsed.top_via.branch == invite.top_via.branch
