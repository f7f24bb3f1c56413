"""Finding #8: a dialer that can't be turned on its owner.

`POST /api/calls` used to dial any SIP URI: the cloud metadata address, localhost, even the bot's
own SIP port (where it talked to itself until hung up). And a ring timeout of 2 s against a target
that never answered left the call `calling` for 32 s (timer B), because RFC 3261 forbids a CANCEL
before a provisional response. Through the real server's HTTP API (and the CLI): refused targets
get 400 with the reason and no packet; the ring timeout ends the call on time. In process, against
a real gateway: the SIP transaction the gateway gave up on goes on (CANCEL after a late 180, ACK
and BYE for a late 200) and its late end does not change the call's outcome.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from telephony.sip.dialpolicy import AllowList
from telephony.sip.gateway import SipCallHandle, SipConfig, SipGateway
from telephony.sip.message import SipRequest, make_response, parse_message, serialize
from testkit.cli import run_cli_in
from testkit.server import ServerProcess

RING_TIMEOUT_S = 2.0
#: The call must be over this soon after it was placed (the finding: 32 s).
NO_ANSWER_WITHIN_S = 3.5


def api(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    return server.api(method, path, body)


@pytest.fixture
def sink() -> Iterator[socket.socket]:
    """A loopback UDP port that takes every packet and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket, wait_s: float = 0.0) -> list[bytes]:
    """Every datagram that reached ``sock`` (waiting up to ``wait_s`` for the first)."""
    packets: list[bytes] = []
    deadline = time.monotonic() + wait_s
    while True:
        try:
            packets.append(sock.recv(65535))
        except (TimeoutError, BlockingIOError):
            if packets or time.monotonic() >= deadline:
                return packets


# --------------------------------------------------------------------------- refusals, end to end


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_dialer_refuses_metadata_itself_and_hosts_off_the_list(server: ServerProcess) -> None:
    port = server.sip_port
    refused = {
        "sip:x@169.254.169.254": "metadata",
        "sip:x@[::ffff:169.254.169.254]": "metadata",
        "sip:x@metadata.google.internal": "metadata",
        f"sip:x@localhost:{port}": "own SIP port",
        f"sip:x@127.0.0.1:{port}": "own SIP port",
        f"sip:x@[::1]:{port}": "own SIP port",
        f"sip:x@0.0.0.0:{port}": "unspecified",
        "sip:x@[fe80::1]": "link-local",
        "sip:x@192.0.2.1:5060": "not on VOICEBOT_DIAL_ALLOW",
        "sip:x@pbx.example.com": "not on VOICEBOT_DIAL_ALLOW",
    }
    for target, why in refused.items():
        status, body = api(server, "POST", "/calls", {"to": target})
        assert status == 400, (target, status, body)
        assert why in body.get("detail", ""), (target, body)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_refused_host_gets_no_packet(server: ServerProcess) -> None:
    """127.0.0.2 is this machine too, but not on the test server's list (127.0.0.1): nothing is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.2", 0))
        listener.settimeout(0.2)
        target = f"sip:x@127.0.0.2:{listener.getsockname()[1]}"
        status, body = api(server, "POST", "/calls", {"to": target})
        assert status == 400 and "127.0.0.2" in body.get("detail", ""), (status, body)
        assert received(listener, wait_s=1.0) == [], "the refused target was sent something"


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_the_cli_reports_a_refusal_with_its_reason(server: ServerProcess) -> None:
    result: subprocess.CompletedProcess[str] = run_cli_in(
        server.data_dir, "call", "sip:x@169.254.169.254", "--timeout", "5", check=False, port=server.port
    )
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 1, output
    assert "error" in result.stderr and "metadata" in result.stderr and "400" in result.stderr, output
    assert "calling" not in result.stdout, output


# --------------------------------------------------------------------------- ring timeout, end to end


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_ring_timeout_ends_an_unanswered_call_on_time(server: ServerProcess, sink: socket.socket) -> None:
    target = f"sip:x@127.0.0.1:{sink.getsockname()[1]}"
    placed_at = time.monotonic()
    status, view = api(server, "POST", "/calls", {"to": target, "ring_timeout": RING_TIMEOUT_S})
    assert status == 202, (status, view)
    seen = [view["status"]]
    while view["status"] != "ended":
        assert time.monotonic() - placed_at < NO_ANSWER_WITHIN_S, (
            f"still {view['status']} {NO_ANSWER_WITHIN_S} s after a {RING_TIMEOUT_S:g} s ring timeout: {seen}"
        )
        time.sleep(0.05)
        status, view = api(server, "GET", f"/calls/{view['call_id']}")
        assert status == 200, (status, view)
        if view["status"] != seen[-1]:
            seen.append(view["status"])
    elapsed = time.monotonic() - placed_at
    assert view["outcome"] == "no-answer", view
    assert "no answer after 2 s" in view["reason"], view
    assert elapsed >= RING_TIMEOUT_S - 0.2, f"ended after {elapsed:.2f} s, before the ring timeout"
    invites = [p for p in received(sink) if p.startswith(b"INVITE ")]
    assert invites, "the sink never got the INVITE: the call was not placed where it was meant to go"


# --------------------------------------------------------------------------- in process: the SIP side


async def _no_call(_handle: SipCallHandle) -> None:
    raise AssertionError("no call should reach the application")


async def _next_request(sock: socket.socket, method: str, timeout: float = 3.0) -> SipRequest:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), left)
        except TimeoutError:
            break
        message = parse_message(data)
        if isinstance(message, SipRequest) and message.method == method:
            return message
    raise AssertionError(f"no {method} within {timeout} s")


@pytest.fixture
async def gateway() -> Any:
    config = SipConfig(host="127.0.0.1", port=0, dial_allow=AllowList.parse("127.0.0.1"), ring_timeout=30)
    gw = SipGateway(config, _no_call)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("late", ["ringing-then-487", "200"])
async def test_a_call_given_up_on_ends_now_and_its_late_end_is_ignored(
    gateway: SipGateway, sink: socket.socket, late: str
) -> None:
    sink.setblocking(False)
    statuses: list[str] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    handle = await gateway.place_call(
        f"sip:x@127.0.0.1:{sink.getsockname()[1]}",
        listener=lambda h: statuses.append(h.status),
        ring_timeout=0.5,
    )
    invite = await _next_request(sink, "INVITE")
    await asyncio.wait_for(handle.ended.wait(), 1.5)
    assert loop.time() - started < 1.2
    assert (handle.status, handle.outcome, handle.reason) == ("ended", "no-answer", "no answer after 0.5 s")
    assert statuses == ["ended"] and gateway.active_calls == 0
    assert handle.media._transport is None or handle.media._transport.is_closing(), "RTP left open"
    assert not handle.sip.ended, "the SIP transaction must go on after the gateway gave up"

    peer = sink.getsockname()
    reply_to = (handle.sip.peer[0], gateway.port)
    if late == "200":
        ok = make_response(invite, 200, to_tag="late", headers=(("Contact", f"<sip:x@127.0.0.1:{peer[1]}>"),))
        sink.sendto(serialize(ok), reply_to)
        await _next_request(sink, "ACK")
        await _next_request(sink, "BYE")
    else:
        sink.sendto(serialize(make_response(invite, 180, to_tag="late")), reply_to)
        cancel = await _next_request(sink, "CANCEL")
        sink.sendto(serialize(make_response(cancel, 200, to_tag="late")), reply_to)
        sink.sendto(serialize(make_response(invite, 487, to_tag="late")), reply_to)
        await _next_request(sink, "ACK")
    deadline = loop.time() + 2.0
    while not handle.sip.ended and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert handle.sip.ended, "the agent did not finish the call"
    # Its CallEnded came and went: nothing about the call changed.
    assert (handle.status, handle.outcome, handle.reason) == ("ended", "no-answer", "no answer after 0.5 s")
    assert statuses == ["ended"]
