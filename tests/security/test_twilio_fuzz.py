"""Hypothesis fuzz of the Twilio `start` message against a live server (issue 9).

Each example opens a real Media Streams WebSocket and sends `connected` and a `start` whose ids,
custom parameters and media format are drawn from valid and hostile values. The server must
classify it exactly: a start it should refuse closes with 1008; a valid one is admitted (or, at
capacity, closed with 1013). After the run: no file outside the data dir, no raw control character
in the server log, no traceback, /health is 200 and a normal call works. Valid starts may meet
the server's limit of 16 calls (1013): the calls of earlier examples are still winding down.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from testkit.server import ServerProcess
from testkit.twilio_caller import TwilioCall

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("VOICEBOT_FUZZ_EXAMPLES", "2000"))
SID = re.compile(r"(?:CA|MZ|AC)[0-9a-f]{32}")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
HOSTILE = [
    "/tmp/voicebot-fuzz/abs",
    "../../../../tmp/voicebot-fuzz/rel",
    "CA" + "0" * 30 + "\n2026-01-01 INFO forged",
    "CA\x1b[2J" + "0" * 28,
    "CA" + "0" * 31 + "\x00",
    "",
    "CA" + "Ä" * 32,
    "ＣＡ" + "0" * 32,
    "CA" + "0" * 32 + "/../../x",
]


def sid(prefix: str) -> st.SearchStrategy[Any]:
    valid = st.binary(min_size=16, max_size=16).map(lambda b: prefix + b.hex())
    hostile = st.one_of(
        st.sampled_from(HOSTILE),
        st.text(max_size=60),
        valid.map(lambda s: s.upper()),
        st.integers(),
        st.none(),
    )
    return st.one_of(valid, hostile)


PARAM_TEXT = st.one_of(st.sampled_from(["+15550100001", "client:alice", "anonymous"]), st.text(max_size=300))
PARAMS = st.one_of(
    st.just({"From": "+15550100001", "To": "+15550100002"}),
    st.dictionaries(st.text(max_size=20), PARAM_TEXT, max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=5), st.just("x"), min_size=33, max_size=40),
)
FORMAT = st.one_of(
    st.just({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}),
    st.fixed_dictionaries(
        {
            "encoding": st.sampled_from(["audio/x-mulaw", "audio/x-alaw", "audio/l16", "\x00"]),
            "sampleRate": st.sampled_from([8000, 16000, 0, -1, 2**40]),
            "channels": st.sampled_from([1, 2, 0]),
        }
    ),
)


def should_admit(start: dict[str, Any]) -> bool:
    ids = (start["callSid"], start["streamSid"], start["accountSid"])
    prefixes = ("CA", "MZ", "AC")
    if not all(
        isinstance(v, str) and SID.fullmatch(v) and v.startswith(p)
        for v, p in zip(ids, prefixes, strict=True)
    ):
        return False
    params = start["customParameters"]
    if len(params) > 32 or any(not k or len(k) > 256 or len(v) > 256 for k, v in params.items()):
        return False
    if any(CONTROL.search(k) or CONTROL.search(v) for k, v in params.items()):
        return False
    return bool(start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})


def exchange(url: str, start: dict[str, Any]) -> tuple[str, int | None]:
    """Send the start; ("closed", code) when the server closed the socket, ("admitted", None) if not."""
    with connect(url, open_timeout=10, proxy=None, max_size=2**22) as ws:
        ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send(
            json.dumps(
                {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": start["streamSid"]}
            )
        )
        try:
            ws.recv(timeout=0.4)
        except TimeoutError:
            pass
        except ConnectionClosed:
            return "closed", ws.close_code
        if ws.close_code is not None:
            return "closed", ws.close_code
        stop = {"event": "stop", "streamSid": start["streamSid"], "stop": {"callSid": start["callSid"]}}
        try:
            ws.send(json.dumps(stop))
        except ConnectionClosed:
            return "closed", ws.close_code
        return "admitted", None


def _files_outside(repo: Path) -> set[str]:
    """What the hostile ids would have created: /tmp/voicebot-fuzz*, and recordings in the checkout."""
    found = {str(p) for p in Path("/tmp").glob("voicebot-fuzz*")}
    found |= {str(p) for p in repo.rglob("*.wav") if ".venv" not in p.parts}
    return found


@pytest.mark.timeout(900)
def test_start_message_fuzz(capacity_server: ServerProcess) -> None:
    watched = Path(__file__).resolve().parents[2]
    before = _files_outside(watched)
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        call_sid=sid("CA"),
        stream_sid=sid("MZ"),
        account_sid=sid("AC"),
        params=PARAMS,
        media_format=FORMAT,
    )
    def one(
        call_sid: Any, stream_sid: Any, account_sid: Any, params: dict[str, str], media_format: Any
    ) -> None:
        start = {
            "callSid": call_sid,
            "streamSid": stream_sid,
            "accountSid": account_sid,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": media_format,
        }
        outcome, code = exchange(capacity_server.ws_url, start)
        key = f"{outcome}:{code}"
        outcomes[key] = outcomes.get(key, 0) + 1
        if should_admit(start):
            assert outcome == "admitted" or code == 1013, (start, outcome, code)
        else:
            assert (outcome, code) == ("closed", 1008), (start, outcome, code)

    one()
    print(f"\nfuzz: {sum(outcomes.values())} examples, outcomes {outcomes}")
    assert sum(outcomes.values()) >= EXAMPLES
    assert _files_outside(watched) == before
    data_dir = capacity_server.data_dir.resolve()
    assert all(p.resolve().is_relative_to(data_dir) for p in data_dir.rglob("*"))
    log = capacity_server.log_path.read_bytes().decode("utf-8", "replace")
    raw = [line for line in log.split("\n") if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line)]
    assert not raw, raw[:5]
    assert "Traceback" not in log
    assert capacity_server.health()[0] == 200


@pytest.mark.timeout(120)
async def test_a_normal_call_works_after_the_fuzz(capacity_server: ServerProcess) -> None:
    async with TwilioCall(capacity_server.ws_url, call_sid="CA" + uuid.uuid4().hex) as call:
        greeting = await call.hear_greeting(timeout=20)
        await call.stop()
    assert greeting.complete
