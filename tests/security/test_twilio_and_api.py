"""Regression tests for the security probe's findings on the Twilio gateway and the HTTP API.

Each test goes through the real interface of a real server: the Media Streams WebSocket, the TwiML
webhook, the /api endpoints and the CLI. Findings (issue 9): 1 files from callSid, 2 capacity race,
3 memory across a reused CallSid, 4 DTMF and numbers in clear, 6 loopback as a login, 7 the Host
header in TwiML.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from testkit.audio import speak
from testkit.cli import CliRunner, run_cli_in
from testkit.server import ServerProcess, serve_for_tests
from testkit.twilio_caller import TwilioCall
from voicebot.storage.records import CallDetail, Records

pytestmark = pytest.mark.e2e

GREETING_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 40.0
CARD = "4539148803436467"  # Luhn-valid


def http(
    server: ServerProcess,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"{server.url}{path}", data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=15) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def form(fields: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(fields).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def wait_call(server: ServerProcess, predicate: Any, timeout: float = 20.0) -> list[CallDetail]:
    """The recorded calls once `predicate(calls)` holds."""
    records = Records(server.database_url, run_migrations=False)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            calls = [records.get_call(c.id) for c in records.list_calls(limit=500)]
            found = [c for c in calls if c is not None]
            if predicate(found) or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.25)
    finally:
        records.close()


# --------------------------------------------------------------------------- 1. wire ids are not paths


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "call_sid",
    [
        "/tmp/voicebot-probe/abs/pwned",
        "../../../../tmp/voicebot-probe/rel",
        "CA" + "0" * 30 + "\nINFO forged line",
        "CA" + "G" * 32,
        "CA" + "0" * 33,
    ],
)
async def test_hostile_call_sid_is_refused_and_writes_nothing(server: ServerProcess, call_sid: str) -> None:
    before = set(Path("/tmp").glob("voicebot-probe*"))
    call = TwilioCall(server.ws_url, call_sid=call_sid)
    await call.connect()
    code, reason = await call.wait_closed(timeout=10)
    await call.close()
    assert code == 1008 and reason and "invalid_sid" in reason, (code, reason)
    assert set(Path("/tmp").glob("voicebot-probe*")) == before
    assert not any("forged line" in line and "INFO" in line[:40] for line in server.log_text().splitlines())
    assert all(p.resolve().is_relative_to(server.data_dir.resolve()) for p in server.data_dir.rglob("*.wav"))


@pytest.mark.timeout(60)
async def test_control_characters_in_parameters_are_refused(server: ServerProcess) -> None:
    call = TwilioCall(server.ws_url, from_number="+1555\n2026-01-01 INFO forged")
    await call.connect()
    code, reason = await call.wait_closed(timeout=10)
    await call.close()
    assert code == 1008 and reason and "control character" in reason, (code, reason)
    assert "\n2026-01-01 INFO forged" not in server.log_text()


# --------------------------------------------------------------------------- 3. memory belongs to its call


@pytest.mark.timeout(240)
async def test_reused_call_sid_from_another_number_gets_no_memory(server: ServerProcess) -> None:
    sid = "CA" + uuid.uuid4().hex
    async with TwilioCall(server.ws_url, call_sid=sid, from_number="+15550142001") as first:
        await first.hear_greeting(timeout=GREETING_TIMEOUT_S)
        await first.ask(speak("My order number is 4 5 7 1 2."), timeout=REPLY_TIMEOUT_S)
        await first.drop()  # an abnormal end: the case a real reconnect would resume
    async with TwilioCall(server.ws_url, call_sid=sid, from_number="+15550142999") as second:
        await second.hear_greeting(timeout=GREETING_TIMEOUT_S)
        await second.ask(speak("When will my order arrive?"), timeout=REPLY_TIMEOUT_S)
        await second.stop()

    def both_done(calls: list[CallDetail]) -> bool:
        mine = [c for c in calls if c.external_id == sid]
        return len(mine) == 2 and all(any(t.caller_text for t in c.turns) for c in mine)

    calls = [c for c in await wait_call(server, both_done) if c.external_id == sid]
    assert len(calls) == 2, [c.id for c in calls]
    earlier, later = sorted(calls, key=lambda c: c.started_at)
    # What the first caller's memory held: the order number as the server heard it (tiny.en may get a
    # digit wrong; a first call that stored none would leave nothing to leak, and prove nothing).
    given = [t.slots["order_number"] for t in earlier.turns if t.slots.get("order_number")]
    assert given, f"the first call stored no order number: {[t.caller_text for t in earlier.turns]}"
    asked = [t for t in later.turns if t.caller_text.strip()]
    assert asked, later
    said = re.sub(r"\D", "", " ".join(t.bot_text for t in later.turns))
    assert given[0] not in said and "45712" not in said, later.turns
    assert all("order_number" not in t.slots for t in later.turns), later.turns


# --------------------------------------------------------------------------- 4. DTMF and numbers


@pytest.mark.timeout(120)
async def test_keypad_card_and_caller_number_are_not_stored_in_clear(
    server: ServerProcess, run_cli: CliRunner
) -> None:
    number = "+15550177123"
    async with TwilioCall(server.ws_url, from_number=number) as call:
        await call.hear_greeting(timeout=GREETING_TIMEOUT_S)
        await call.dtmf(CARD + "#")
        await asyncio.sleep(3)
        await call.stop()

    def stored(calls: list[CallDetail]) -> bool:
        return any(c.external_id == call.call_sid and c.ended_at and c.turns for c in calls)

    (detail,) = [c for c in await wait_call(server, stored) if c.external_id == call.call_sid]
    assert all(CARD not in t.dtmf for t in detail.turns), [t.dtmf for t in detail.turns]
    assert any("[card]" in t.dtmf for t in detail.turns), [t.dtmf for t in detail.turns]
    assert number not in detail.from_number and detail.from_number.endswith("7123"), detail.from_number
    raw = (server.data_dir / "voicebot.db").read_bytes()
    assert number.encode() not in raw and CARD.encode() not in raw

    shown = run_cli("calls", "show", detail.id).stdout
    assert CARD not in shown and number not in shown, shown
    assert number not in run_cli("calls", "list").stdout
    assert detail.id in run_cli("calls", "list", "--number", number).stdout
    refused = run_cli("calls", "show", detail.id, "--reveal", check=False)
    assert refused.returncode == 1 and "--reason" in refused.stderr
    revealed = run_cli("calls", "show", detail.id, "--reveal", "--reason", "caller asked for a callback")
    assert number in revealed.stdout
    audit = [json.loads(line) for line in (server.data_dir / "audit.log").read_text().splitlines()]
    assert audit[-1]["call"] == detail.id and audit[-1]["reason"] == "caller asked for a callback"


# --------------------------------------------------------------------------- 6. an API that needs a key


API_PATHS = ["/api/kb", "/api/kb/entries", "/api/kb/search?q=x", "/docs", "/openapi.json"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", API_PATHS)
def test_api_and_docs_need_a_key_even_from_loopback(server: ServerProcess, path: str) -> None:
    for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"Authorization": "Bearer vb_0_nope"}):
        status, body, _ = http(server, "GET", path, headers=headers)
        assert status == 401, (path, headers, status, body[:200])
    status, _body, _ = http(server, "GET", path, headers=server.api_headers)
    assert status == 200
    basic = base64.b64encode(f"any:{server.api_key}".encode()).decode()
    assert http(server, "GET", path, headers={"Authorization": f"Basic {basic}"})[0] == 200


@pytest.mark.timeout(60)
def test_dial_api_needs_a_key(server: ServerProcess) -> None:
    body = json.dumps({"to": f"sip:bot@127.0.0.1:{server.sip_port}"}).encode()
    status, _, _ = http(server, "POST", "/api/calls", body=body, headers={"Content-Type": "application/json"})
    assert status == 401


@pytest.mark.timeout(120)
def test_keys_cli_creates_lists_and_revokes(server: ServerProcess, run_cli: CliRunner) -> None:
    created = run_cli("keys", "create", "probe key").stdout
    key = re.search(r"vb_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", created)
    assert key is not None, created
    headers = {"Authorization": f"Bearer {key.group()}"}
    assert http(server, "GET", "/api/kb", headers=headers)[0] == 200
    key_id = key.group().split("_")[1]
    listed = run_cli("keys", "list").stdout
    assert key_id in listed and key.group() not in listed
    # The first key was stored hashed: it is nowhere in the database.
    assert server.api_key.encode() not in (server.data_dir / "voicebot.db").read_bytes()
    run_cli("keys", "revoke", key_id)
    assert http(server, "GET", "/api/kb", headers=headers)[0] == 401
    assert "revoked" in run_cli("keys", "list").stdout
    # The CLI still reaches the server (a temporary key of its own) while the server holds the KB.
    assert run_cli_in(server.data_dir, "kb", "list", port=server.port).returncode == 0


# --------------------------------------------------------------------------- 7. TwiML and the Host header


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1?x=1", "a b", ""])
def test_webhook_never_builds_the_stream_url_from_a_foreign_host(server: ServerProcess, host: str) -> None:
    fields = {"From": "+15550100001", "To": "+15550100002", "CallSid": "CA" + "1" * 32}
    status, body, _ = http(server, "POST", "/twilio/voice", body=form(fields), headers={**FORM, "Host": host})
    assert status == 400, (status, body[:300])
    assert b"evil.example" not in body or b"not an allowed" in body


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["+1555\x00", "+1555\n<Stream url='wss://evil'/>", "x" * 300])
def test_webhook_answers_bad_fields_with_400(server: ServerProcess, value: str) -> None:
    status, body, _ = http(server, "POST", "/twilio/voice", body=form({"From": value}), headers=FORM)
    assert status == 400, (status, body[:300])


# --------------------------------------------------------------------------- 4. signed deployments

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://bot.example.com"


@pytest.fixture(scope="module")
def signed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"VOICEBOT_TWILIO_AUTH_TOKEN": TOKEN, "VOICEBOT_PUBLIC_URL": PUBLIC}
    yield from serve_for_tests(tmp_path_factory, "signed", env)


@pytest.mark.timeout(60)
def test_signed_webhook_needs_a_valid_signature(signed_server: ServerProcess) -> None:
    fields = {"From": "+15550100001", "To": "+15550100002", "CallSid": "CA" + "2" * 32}
    signature = RequestValidator(TOKEN).compute_signature(f"{PUBLIC}/twilio/voice", fields)
    good = {**FORM, "X-Twilio-Signature": signature}
    status, body, _ = http(signed_server, "POST", "/twilio/voice", body=form(fields), headers=good)
    assert status == 200, body
    assert b'url="wss://bot.example.com/twilio/stream"' in body
    tampered = form({**fields, "From": "+15550199999"})
    assert http(signed_server, "POST", "/twilio/voice", body=tampered, headers=good)[0] == 403
    assert http(signed_server, "POST", "/twilio/voice", body=form(fields), headers=FORM)[0] == 403
    assert "bad or missing X-Twilio-Signature" in signed_server.log_text()


@pytest.mark.timeout(90)
async def test_signed_stream_upgrade_needs_a_valid_signature(signed_server: ServerProcess) -> None:
    url = signed_server.ws_url
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, proxy=None, open_timeout=10):
            pass
    assert refused.value.response.status_code == 403
    signature = RequestValidator(TOKEN).compute_signature("wss://bot.example.com/twilio/stream", {})
    async with connect(
        url, proxy=None, open_timeout=10, additional_headers={"X-Twilio-Signature": signature}
    ) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZ" + "0" * 32}))
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1008  # a protocol error, not a 403: the upgrade was accepted
