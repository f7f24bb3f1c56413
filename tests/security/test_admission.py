"""Finding 2 of issue 9: the call limit could be passed by streams that start at the same moment.

24 calls arrive at once against VOICEBOT_MAX_CALLS=16, over the Media Streams WebSocket and over
SIP (sipp): exactly 16 are admitted, the other 8 are refused the way capacity always answers
(WebSocket close 1013, SIP 486 with Retry-After), and every slot comes back when the calls end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from testkit import sip_peers as sp
from testkit.server import ServerProcess
from testkit.twilio_caller import TwilioCall

pytestmark = pytest.mark.e2e

CAPACITY = 16  # VOICEBOT_MAX_CALLS of the capacity_server fixture (tests/conftest.py)

LIMIT = CAPACITY
AT_ONCE = 24


def wait_idle(server: ServerProcess, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = server.health()
        if status == 200 and body.get("active_calls") == 0:
            return body
        assert time.monotonic() < deadline, f"calls still active: {body}"
        time.sleep(0.25)


@pytest.mark.timeout(180)
async def test_24_simultaneous_streams_admit_exactly_16(capacity_server: ServerProcess) -> None:
    calls = [TwilioCall(capacity_server.ws_url, send_silence=False) for _ in range(AT_ONCE)]
    for call in calls:
        await call.open()
    # Every `start` goes out at the same moment.
    await asyncio.gather(*(c.send_json({"event": "connected", "protocol": "Call"}) for c in calls))
    await asyncio.gather(*(c.send_start() for c in calls))

    async def closed(call: TwilioCall) -> tuple[int | None, str | None] | None:
        try:
            return await call.wait_closed(timeout=4)
        except TimeoutError:
            return None  # still open: admitted

    closes = [c for c in await asyncio.gather(*(closed(call) for call in calls)) if c is not None]
    assert all(code == 1013 for code, _reason in closes), closes
    refused = len(closes)
    try:
        assert refused == AT_ONCE - LIMIT, f"{AT_ONCE - refused} admitted against a limit of {LIMIT}"
        status, health = capacity_server.health()
        assert status == 200 and health["active_calls"] == LIMIT, health
    finally:
        await asyncio.gather(*(c.stop() for c in calls))
    await asyncio.to_thread(wait_idle, capacity_server)


@pytest.mark.timeout(180)
def test_24_simultaneous_invites_admit_exactly_16(capacity_server: ServerProcess, tmp_path: Path) -> None:
    media = sp.free_udp_port_range(4)
    args = [
        f"127.0.0.1:{capacity_server.sip_port}", "-sn", "uac", "-s", "bot", "-i", sp.HOST,
        "-p", str(sp.free_udp_port()), "-mp", str(media),
        "-m", str(AT_ONCE), "-l", str(AT_ONCE), "-r", str(AT_ONCE), "-rp", "100", "-d", "4000",
    ]  # fmt: skip
    result = sp.run_sipp(args, run_dir=tmp_path, timeout=90, name="uac-24")
    codes = result.status_codes()
    assert result.counter("SuccessfulCall") == LIMIT, result.describe()
    assert result.counter("FailedCall") == AT_ONCE - LIMIT, result.describe()
    assert codes.count(486) >= AT_ONCE - LIMIT, codes  # a 486 may be retransmitted before its ACK
    assert "Retry-After" in result.messages()
    assert "Traceback" not in capacity_server.log_text()
    wait_idle(capacity_server)
