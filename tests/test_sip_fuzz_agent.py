"""Property fuzzing of the SIP transaction layer and the user agent core.

Hypothesis generates valid-ish requests of every method (random, missing and duplicated headers,
tags, branches, CSeqs and bodies), responses to requests the agent did and did not send, byte
mutations of captured messages, app actions (accept, reject, hangup, refer, invite) and clock
jumps, all interleaved. Properties:

* ``receive``/``tick``/the app methods never raise;
* every output is an event or a Datagram whose bytes parse with ``parse_message``;
* nothing grows without bound: five minutes of silence later the agent holds no transactions and
  no calls beyond those the test answered and kept;
* afterwards a plain OPTIONS still gets a 200.

Examples are counted; the last test asserts the total (``-s`` prints it).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.sip.agent import (
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
    Reinvite,
    SipAgent,
    SipCall,
    TransferUpdate,
)
from telephony.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    parse_message,
    serialize,
)
from telephony.sip.transaction import ClientTransaction, ServerTransaction, Timers

EXAMPLES: Counter[str] = Counter()

MIN_TOTAL_EXAMPLES: Final = 10_000

BOT: Final = ("192.0.2.1", 5060)
PEERS: Final = [("192.0.2.2", 5062), ("192.0.2.3", 5060), ("[2001:db8::1]", 5060)]
EVENT_TYPES: Final = (
    IncomingCall,
    Reinvite,
    CallConfirmed,
    CallProgress,
    CallAnswered,
    CallEnded,
    TransferUpdate,
    DtmfInfo,
    Malformed,
)
QUIET: Final = 300.0  # five minutes of silence

#: Each example is one seed: generation runs on random.Random(seed), cheap per choice, and a failure
#: reports the seed, which replays the whole run.
SEEDS: Final = st.integers(0, 2**64 - 1)

_FUZZ = settings(
    deadline=None,
    database=None,  # no .hypothesis/ folder in the shared tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

OFFER: Final = (
    b"v=0\r\no=a 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)
BODIES: Final = [
    (b"", None),
    (OFFER, "application/sdp"),
    (OFFER.replace(b"t=0 0", b"t=0 0\r\na=sendonly"), "application/sdp"),
    (b"Signal=5\r\nDuration=100\r\n", "application/dtmf-relay"),
    (b"Signal=\r\n", "application/dtmf-relay"),
    (b"#", "application/dtmf"),
    (b"SIP/2.0 100 Trying\r\n", "message/sipfrag"),
    (b"SIP/2.0 200 OK\r\n", "message/sipfrag;version=2.0"),
    (b"SIP/2.0 999 Odd\r\n", "message/sipfrag"),
    (b"\xff\xfe\x00garbage", "application/octet-stream"),
]
METHODS: Final = [
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "OPTIONS",
    "INFO",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "UPDATE",
    "PRACK",
    "REGISTER",
]
CALL_IDS: Final = ["c1@192.0.2.2", "c2@192.0.2.2", "c3"]
PEER_TAGS: Final = ["p1", "p2", "p3"]
BRANCHES: Final = ["z9hG4bKa1", "z9hG4bKa2", "z9hG4bKa3", "z9hG4bKa4", "rfc2543branch"]


# --- the model of a fuzz run --------------------------------------------------------------------


@dataclass
class Run:
    agent: SipAgent
    now: float = 0.0
    kept: set[int] = field(default_factory=set)  # id() of calls the test answered or placed
    calls: list[SipCall] = field(default_factory=list)
    # learned from the agent's output, so generated messages can hit real dialogs
    our_tags: list[str] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)
    our_requests: list[SipRequest] = field(default_factory=list)
    outputs: int = 0

    def collect(self) -> None:
        for out in self.agent.drain():
            self.outputs += 1
            if isinstance(out, Datagram):
                assert isinstance(out.data, bytes) and isinstance(out.addr, tuple) and len(out.addr) == 2
                message = parse_message(out.data)  # every datagram we send must parse
                learn(self, message)
                continue
            assert isinstance(out, EVENT_TYPES), out
            call = getattr(out, "call", None)
            if call is not None and call not in self.calls:
                self.calls.append(call)

    def receive(self, data: bytes, addr: tuple[str, int]) -> None:
        self.agent.receive(data, addr, self.now)
        self.collect()

    def tick(self, dt: float) -> None:
        self.now += dt
        self.agent.tick(self.now)
        self.collect()


def learn(run: Run, message: SipRequest | SipResponse) -> None:
    call_id = message.call_id
    if call_id not in run.call_ids:
        run.call_ids.append(call_id)
    if isinstance(message, SipRequest):
        tag = message.from_addr.tag
        run.our_requests.append(message)
        del run.our_requests[:-20]
    else:
        tag = message.to_addr.tag
    if tag and tag not in run.our_tags:
        run.our_tags.append(tag)
        del run.our_tags[:-20]


def new_agent() -> SipAgent:
    return SipAgent(AgentConfig(*BOT), invite_gate=lambda addr, now: addr[1] != 5099)


def quiesce(run: Run) -> None:
    """Five minutes with no traffic (ticked every few seconds), then the no-leak properties."""
    end = run.now + QUIET
    while run.now < end:
        run.now = min(end, run.now + 7.0)
        run.agent.tick(run.now)
        run.collect()
    agent = run.agent
    assert agent._client == {}, agent._client
    assert agent._server == {}, agent._server
    leftover = [c for c in agent.calls if id(c) not in run.kept]
    assert leftover == [], [(c.key, c.state) for c in leftover]
    assert all(not c.ended for c in agent.calls)
    assert set(map(id, agent._by_dialog.values())) <= set(map(id, agent.calls))
    # and it still answers
    options = (
        b"OPTIONS sip:bot@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKfinal\r\n"
        b"From: <sip:probe@192.0.2.9>;tag=probe\r\nTo: <sip:bot@192.0.2.1>\r\nCall-ID: final-probe\r\n"
        b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    agent.receive(options, ("192.0.2.9", 5060), run.now)
    (answer,) = agent.drain()
    assert isinstance(answer, Datagram)
    reply = parse_message(answer.data)
    assert isinstance(reply, SipResponse) and reply.status == 200


# --- generators -----------------------------------------------------------------------------------


def pick_tag(rnd: random.Random, run: Run) -> str | None:
    pool: list[str | None] = [None, *PEER_TAGS, *run.our_tags]
    return rnd.choice(pool)


def gen_request(rnd: random.Random, run: Run) -> tuple[bytes, tuple[str, int]]:
    method = rnd.choice(METHODS)
    peer = rnd.choice(PEERS)
    call_id = rnd.choice(CALL_IDS + run.call_ids[-5:])
    from_tag = pick_tag(rnd, run)
    to_tag = pick_tag(rnd, run)
    branch = rnd.choice(BRANCHES)
    seq = rnd.choice([0, 1, 2, 3, 10, 2**31 - 1])
    cseq_method = method if rnd.randint(0, 20) else rnd.choice(METHODS)
    body, ctype = rnd.choice(BODIES)
    uri = rnd.choice(["sip:bot@192.0.2.1:5060", "sip:192.0.2.1", "sips:bot@bot.example", "tel:+1555"])
    host = f"{peer[0]}:{peer[1]}"
    lines = [
        f"Via: SIP/2.0/UDP {host};branch={branch};rport",
        f"Max-Forwards: {rnd.choice(['70', '70', '1', '0'])}",
        f"From: <sip:peer@{host}>" + (f";tag={from_tag}" if from_tag else ""),
        "To: <sip:bot@192.0.2.1>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {seq} {cseq_method}",
        rnd.choice([f"Contact: <sip:peer@{host}>", f"Contact: <sip:peer@{host}>", "Contact: *", ""]),
    ]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    extras = rnd.choices(
        k=rnd.choice([0, 0, 1, 2, 3]),
        population=[
            "Require: 100rel",
            "Require: timer",
            "Supported: replaces",
            "Event: refer",
            "Subscription-State: terminated;reason=noresource",
            "Subscription-State: active",
            "Refer-To: <sip:x@example.com>",
            "Record-Route: <sip:proxy.example.com;lr>",
            "Route: <sip:192.0.2.1;lr>",
            f"Via: SIP/2.0/UDP 198.51.100.1;branch={branch}x",
            "Content-Length: 0",
            "Max-Forwards: 70",  # duplicated: a singleton twice
            "X-Nonsense: \x01",
            "Contact: <broken",
            "l: 9999",
        ],
    )
    lines += extras
    lines = [line for line in lines if line]
    if rnd.randint(0, 9) == 0:  # lose a header, maybe a required one
        del lines[rnd.randint(0, len(lines) - 1)]
    if rnd.randint(0, 9) == 0:  # duplicate one
        lines.append(lines[rnd.randint(0, len(lines) - 1)])
    text = f"{method} {uri} SIP/2.0\r\n" + "\r\n".join(lines)
    has_length = any(line.lower().startswith(("content-length", "l:")) for line in lines)
    if not has_length and rnd.random() < 0.5:
        text += f"\r\nContent-Length: {len(body)}"
    return text.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body, peer


def gen_response(rnd: random.Random, run: Run) -> tuple[bytes, tuple[str, int]]:
    """A response: to one of our requests (mostly) or to a request we never sent."""
    status = rnd.choice([100, 180, 183, 200, 202, 401, 407, 408, 481, 486, 487, 491, 500, 503, 600, 603])
    if rnd.random() < 0.3:
        status = rnd.randint(100, 699)
    to_tag = rnd.choice([None, "callee1", "callee2"])
    peer = rnd.choice(PEERS)
    if run.our_requests and rnd.randint(0, 4):
        request = rnd.choice(run.our_requests)
        if request.method == "ACK":
            request = run.our_requests[0]
        headers: list[tuple[str, str]] = []
        if status in (401, 407):
            name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            value = rnd.choice(['Digest realm="r", nonce="n", qop="auth"', "Digest garbage", "Basic x"])
            headers.append((name, value))
        if rnd.random() < 0.5:
            headers.append(("Contact", f"<sip:callee@{peer[0]}:{peer[1]}>"))
        if rnd.randint(0, 5) == 0:
            headers.append(("Record-Route", "<sip:proxy.example.com;lr>"))
        body, ctype = rnd.choice(BODIES[:3])
        response = make_response(
            request,
            status,
            to_tag=to_tag if status > 100 else None,
            headers=headers,
            body=body,
            content_type=ctype,
        )
        if rnd.randint(0, 9) == 0:  # a CSeq method that does not match the transaction
            response.headers.set("CSeq", f"{request.cseq[0]} {rnd.choice(METHODS)}")
        return serialize(response), peer
    branch = rnd.choice(BRANCHES)
    call_id = rnd.choice(CALL_IDS + run.call_ids[-5:])
    from_tag = pick_tag(rnd, run)
    text = (
        f"SIP/2.0 {status} Whatever\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
        f"From: <sip:bot@192.0.2.1>" + (f";tag={from_tag}" if from_tag else "") + "\r\n"
        "To: <sip:x@192.0.2.2>" + (f";tag={to_tag}" if to_tag else "") + "\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {rnd.randint(0, 5)} {rnd.choice(METHODS)}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return text.encode(), peer


def app_action(rnd: random.Random, run: Run) -> None:
    live = [c for c in run.calls if not c.ended]
    action = rnd.choice(["accept", "reject", "hangup", "ringing", "refer", "invite", "accept"])
    if action == "invite":
        creds = rnd.choice([None, Credentials("u", "p")])
        dest = rnd.choice(PEERS)
        call = run.agent.invite(
            f"sip:callee@{dest[0]}:{dest[1]}", OFFER, run.now, dest=dest, credentials=creds
        )
        run.kept.add(id(call))
        run.calls.append(call)
    elif live:
        call = rnd.choice(live)
        if action == "accept":
            run.agent.accept(call, OFFER, run.now)
            run.kept.add(id(call))
        elif action == "reject":
            run.agent.reject(call, rnd.choice([486, 488, 603, 302, 500]), run.now)
        elif action == "hangup":
            run.agent.hangup(call, run.now)
        elif action == "ringing":
            run.agent.ringing(call, run.now)
        else:
            run.agent.refer(call, "sip:transfer@example.com", run.now)
    run.collect()


def steps(rnd: random.Random, run: Run, weights: tuple[int, int, int, int], count: int) -> None:
    kinds = (
        ["request"] * weights[0] + ["response"] * weights[1] + ["tick"] * weights[2] + ["app"] * weights[3]
    )
    for _ in range(count):
        kind = rnd.choice(kinds)
        if kind == "request":
            run.receive(*gen_request(rnd, run))
        elif kind == "response":
            run.receive(*gen_response(rnd, run))
        elif kind == "tick":
            run.tick(rnd.choice([0.0, 0.1, 0.5, 1.0, 4.0, 5.0, 16.0, 31.0, 33.0, 40.0]))
        else:
            app_action(rnd, run)


def clean_up(run: Run) -> None:
    """What the app does at the end of a run: hang up every call it kept, then wait."""
    for call in run.calls:
        if not call.ended:
            run.agent.hangup(call, run.now)
    run.kept.clear()
    run.collect()
    quiesce(run)


# --- the fuzz tests --------------------------------------------------------------------------------


@settings(_FUZZ, max_examples=4000)
@given(SEEDS)
def test_fuzz_random_requests_and_app_actions(seed: int) -> None:
    rnd = random.Random(seed)
    EXAMPLES["requests"] += 1
    run = Run(new_agent())
    steps(rnd, run, (6, 1, 2, 2), rnd.randint(1, 14))
    quiesce(run)
    clean_up(run)


@settings(_FUZZ, max_examples=3500)
@given(SEEDS)
def test_fuzz_outbound_calls_and_responses(seed: int) -> None:
    rnd = random.Random(seed)
    EXAMPLES["responses"] += 1
    run = Run(new_agent())
    dest = PEERS[0]
    call = run.agent.invite(
        "sip:callee@192.0.2.2:5062", OFFER, 0.0, dest=dest, credentials=Credentials("u", "p")
    )
    run.kept.add(id(call))
    run.calls.append(call)
    run.collect()
    steps(rnd, run, (2, 6, 2, 2), rnd.randint(1, 14))
    quiesce(run)
    clean_up(run)


def captured() -> list[bytes]:
    """Messages as a peer sends them in a real call against the agent (the seeds for mutation)."""
    agent = SipAgent(AgentConfig(*BOT))
    peer = "192.0.2.2:5062"
    invite = (
        f"INVITE sip:bot@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch=z9hG4bKcap1;rport\r\n"
        f'Max-Forwards: 70\r\nFrom: "sipp" <sip:sipp@{peer}>;tag=captag\r\nTo: <sip:bot@192.0.2.1:5060>\r\n'
        f"Call-ID: cap-1@192.0.2.2\r\nCSeq: 1 INVITE\r\nContact: <sip:sipp@{peer}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(OFFER)}\r\n\r\n"
    ).encode() + OFFER
    agent.receive(invite, PEERS[0], 0.0)
    call = next(e.call for e in agent.drain() if isinstance(e, IncomingCall))
    agent.accept(call, OFFER, 0.0)
    ok = next(o.data for o in agent.drain() if isinstance(o, Datagram))
    tag = call.local_tag

    def in_dialog(method: str, seq: int, branch: str, extra: str = "", body: bytes = b"") -> bytes:
        return (
            f"{method} sip:bot@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:sipp@{peer}>;tag=captag\r\n"
            f"To: <sip:bot@192.0.2.1:5060>;tag={tag}\r\n"
            f"Call-ID: cap-1@192.0.2.2\r\nCSeq: {seq} {method}\r\nContact: <sip:sipp@{peer}>\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    return [
        invite,
        ok,
        in_dialog("ACK", 1, "z9hG4bKcap2"),
        in_dialog("INVITE", 2, "z9hG4bKcap3", "Content-Type: application/sdp\r\n", OFFER),
        in_dialog("INFO", 3, "z9hG4bKcap4", "Content-Type: application/dtmf-relay\r\n", b"Signal=5\r\n"),
        in_dialog(
            "NOTIFY", 4, "z9hG4bKcap5", "Event: refer\r\nContent-Type: message/sipfrag\r\n", b"SIP/2.0 200 OK"
        ),
        in_dialog("BYE", 5, "z9hG4bKcap6"),
        invite.replace(b"INVITE sip", b"CANCEL sip")
        .replace(b"1 INVITE", b"1 CANCEL")
        .split(b"Content-Type")[0]
        + b"Content-Length: 0\r\n\r\n",
        in_dialog("OPTIONS", 6, "z9hG4bKcap7"),
    ]


CAPTURED: Final = captured()


def mutated(rnd: random.Random) -> bytes:
    """A captured message with 1-4 byte-level mutations."""
    data = bytearray(rnd.choice(CAPTURED))
    for _ in range(rnd.randint(1, 4)):
        if not data:
            break
        op = rnd.choice(["flip", "insert", "delete", "dup-line", "truncate", "swap-bytes"])
        pos = rnd.randint(0, max(0, len(data) - 1))
        if op == "flip":
            data[pos] = rnd.randint(0, 255)
        elif op == "insert":
            chunk = rnd.choice([b"\r\n", b";tag=x", b",", b"<", b":", b" ", b"\x00", b"z9hG4bK", b"\r\n\r\n"])
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + rnd.randint(1, 12)]
        elif op == "dup-line":
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            if end > 0:
                data[end + 1 : end + 1] = data[start : end + 1]
        elif op == "truncate":
            del data[pos:]
        elif op == "swap-bytes" and len(data) > 1:
            other = rnd.randint(0, len(data) - 1)
            data[pos], data[other] = data[other], data[pos]
    return bytes(data)


@settings(_FUZZ, max_examples=3500)
@given(SEEDS)
def test_fuzz_mutated_captures(seed: int) -> None:
    """Mutations of a real call's messages, fed after the unmutated INVITE so dialogs exist."""
    rnd = random.Random(seed)
    EXAMPLES["mutations"] += 1
    run = Run(new_agent())
    run.receive(CAPTURED[0], PEERS[0])
    for call in run.calls:
        run.agent.accept(call, OFFER, run.now)
        run.kept.add(id(call))
    run.collect()
    for _ in range(rnd.randint(1, 6)):
        run.tick(rnd.choice([0.0, 0.0, 0.5, 2.0, 33.0]))
        if rnd.random() < 0.2:
            run.receive(rnd.choice(CAPTURED), PEERS[0])  # an unmutated one: replays and state changes
        run.receive(mutated(rnd), PEERS[0])
    quiesce(run)
    clean_up(run)


@settings(_FUZZ, max_examples=4000)
@given(SEEDS)
def test_fuzz_transactions(seed: int) -> None:
    """The transaction objects alone: random responses, ACKs, retransmissions and timer firings."""
    rnd = random.Random(seed)
    EXAMPLES["transactions"] += 1
    method = rnd.choice(["INVITE", "BYE", "OPTIONS", "CANCEL"])
    request = parse_message(CAPTURED[0])
    assert isinstance(request, SipRequest)
    request = SipRequest(method, request.uri, request.headers.copy(), b"")
    request.headers.set("CSeq", f"1 {method}")
    timers = Timers()
    now = 0.0
    if rnd.random() < 0.5:
        tx: ClientTransaction | ServerTransaction = ClientTransaction(request, PEERS[0], timers)
        parse_message(tx.start(now))
    else:
        tx = ServerTransaction(request, PEERS[0], timers)
    for _ in range(rnd.randint(0, 12)):
        now += rnd.choice([0.0, 0.1, 0.5, 1.0, 4.0, 5.0, 32.0])
        kind = rnd.choice(["response", "timer", "ack", "retransmission"])
        status = rnd.choice([100, 180, 200, 202, 401, 486, 487, 503, 603])
        response = make_response(request, status, to_tag="tt" if status > 100 else None)
        if isinstance(tx, ClientTransaction):
            if kind == "response":
                sends, deliver = tx.on_response(response, now)
                assert isinstance(deliver, bool)
            else:
                sends = tx.on_timer(now)
        elif kind == "response":
            sends = [tx.respond(response, now)]
        elif kind == "ack":
            tx.on_ack(now)
            sends = []
        elif kind == "retransmission":
            sends = tx.on_retransmission()
        else:
            sends = tx.on_timer(now)
        for datagram in sends:
            parse_message(datagram)
        deadline = tx.next_deadline()
        if kind == "timer" and tx.state != "terminated":
            assert deadline is None or deadline > now  # a timer that fired is re-armed in the future
    # left alone, every transaction ends, except a server transaction still waiting for the TU
    for _ in range(100):
        deadline = tx.next_deadline()
        if deadline is None or tx.state == "terminated":
            break
        now = max(now, deadline)
        for datagram in tx.on_timer(now):
            parse_message(datagram)
    waiting_for_tu = isinstance(tx, ServerTransaction) and tx.final_status is None
    assert tx.state == "terminated" or (waiting_for_tu and tx.next_deadline() is None)


def test_malformed_inputs_are_reported_not_raised() -> None:
    agent = new_agent()
    for junk in (
        b"",
        b"\r\n",
        b"\x00" * 10,
        b"SIP/2.0 200\r\n\r\n",
        b"INVITE x SIP/2.0\r\n\r\n",
        b"a" * 70000,
    ):
        agent.receive(junk, PEERS[0], 0.0)
    outputs = agent.drain()
    assert len(outputs) == 5  # the CRLF is a keep-alive
    assert all(isinstance(out, Malformed) for out in outputs)
    assert agent.stats["malformed"] == 5


def test_zz_fuzz_example_total() -> None:
    """Runs last in this file (pytest keeps file order): proves the example count."""
    total = sum(EXAMPLES.values())
    print(f"\nSIP agent fuzz examples: {total} {dict(EXAMPLES)}")
    assert EXAMPLES["requests"] >= 4000
    assert EXAMPLES["responses"] >= 3500
    assert EXAMPLES["mutations"] >= 3500
    assert EXAMPLES["transactions"] >= 4000
    assert total >= MIN_TOTAL_EXAMPLES
