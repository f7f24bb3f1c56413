"""End-to-end: the bot calls out over SIP (dialer CLI and HTTP API), against real peers on loopback.

The far ends are sipp callees (`testkit/sip_peers/scenarios/uas_*.xml`: answer and echo, busy, ring
forever, decline, out of service, digest challenges) and an auto-answering baresip that records what
it hears; the call's progress is read back from the API, the CLI's output, the records and the
peers' SIP traces.
Two extra servers cover what needs other settings: a trunk behind a digest-authenticating proxy,
and protection (an allowlist that admits only 127.0.0.2, one call at most).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from testkit.audio import transcribe, write_wav
from testkit.cli import run_cli_in
from testkit.net import HOST, free_udp_port, free_udp_port_range, wait_udp_bound
from testkit.server import ServerProcess, serve_for_tests
from testkit.sip_peers import BaresipPeer, SippResult, SippUas, have_binaries, sipp_uac
from testkit.sip_peers.sipp import _kv, _scenario_args, _SippProcess
from testkit.sip_requests import new_branch, new_call_id, new_tag, sdp_offer, sip_request
from voicebot.storage.numbers import mask
from voicebot.storage.records import CallDetail, Records

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have_binaries("sipp"), reason="needs sipp (Debian sip-tester)"),
]

#: The only source the protected server takes SIP from (Linux answers all of 127/8 on loopback).
ALLOWED_HOST = "127.0.0.2"
AUTH_USER, AUTH_PASS = "bot", "secret"
#: A Request-URI nobody listens at: a call to it is answered only if it really went to the proxy.
BEHIND_PROXY = "sip:alice@127.0.0.1:9"


# --------------------------------------------------------------------------- helpers


def call_cli(server: ServerProcess, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGS` pointed at `server` (VOICEBOT_HTTP_PORT set, so `call` goes through it)."""
    return run_cli_in(server.data_dir, *args, timeout=timeout, check=False, port=server.port)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def cli_call_id(result: subprocess.CompletedProcess[str]) -> str:
    """The id on the CLI's first line, with the status the POST answered: calling, or already further
    (a loopback peer can answer, or refuse, before the 202 is written)."""
    found = re.match(r"(out-[0-9a-f]+): (calling|ringing|answered|ended)\b", result.stdout, flags=re.M)
    assert found, f"the CLI did not start with the new call's id and status:\n{describe(result)}"
    return found.group(1)


def cli_statuses(result: subprocess.CompletedProcess[str], call_id: str) -> list[str]:
    return re.findall(rf"^{call_id}: (\S+)", result.stdout, flags=re.M)


def api(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    return server.api(method, path, body)


def dial(server: ServerProcess, to: str, **extra: Any) -> dict[str, Any]:
    status, view = api(server, "POST", "/calls", {"to": to, **extra})
    assert status == 202, f"POST /api/calls to {to}: {status} {view}"
    assert view["status"] in ("calling", "ringing", "answered", "ended"), view  # loopback peers are quick
    assert view["direction"] == "outbound" and view["to"] == to, view
    return view


def follow(
    server: ServerProcess, call_id: str, until: str, timeout: float
) -> tuple[dict[str, Any], list[str]]:
    """Poll GET /api/calls/ID until its status is `until` (or ended); returns the view and the statuses."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        status, view = api(server, "GET", f"/calls/{call_id}")
        assert status == 200, f"GET /api/calls/{call_id}: {status} {view}"
        if not seen or seen[-1] != view["status"]:
            seen.append(view["status"])
        if view["status"] in (until, "ended"):
            return view, seen
        assert time.monotonic() < deadline, f"call {call_id} not {until} after {timeout} s: {seen} {view}"
        time.sleep(0.05)


def wait_record(server: ServerProcess, call_id: str, timeout: float = 15.0) -> CallDetail:
    """The call's record once it has ended (ended_at set) and has a final outcome."""
    store = Records(server.database_url, run_migrations=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            detail = store.get_call(call_id)
            if detail is not None and detail.ended_at is not None and detail.outcome not in ("", "calling"):
                return detail
            if time.monotonic() >= deadline:
                state = (
                    "missing" if detail is None else f"ended_at={detail.ended_at} outcome={detail.outcome}"
                )
                raise AssertionError(f"call {call_id} not recorded as ended ({state})")
            time.sleep(0.1)
    finally:
        store.close()


def assert_outbound_record(server: ServerProcess, call_id: str, outcome: str, to: str) -> CallDetail:
    detail = wait_record(server, call_id)
    assert detail.direction == "outbound", detail
    assert detail.gateway == "sip", detail
    assert detail.outcome == outcome, (
        f"record outcome {detail.outcome!r} != {outcome!r} ({detail.end_reason})"
    )
    assert detail.to_number == mask(to[:64]), detail  # stored encrypted, listed masked
    return detail


def uas_on(
    port: int, scenario: str, run_dir: Path, *, keys: dict[str, Any] | None = None, name: str = "proxy"
) -> _SippProcess:
    """A sipp callee on a port chosen up front (SippUas picks its own; a proxy's is in the server's env)."""
    media = free_udp_port_range(4)
    all_keys = {"sdp_port": media, "auth_user": AUTH_USER, "auth_pass": AUTH_PASS, **(keys or {})}
    args = [
        *_scenario_args(scenario), "-i", HOST, "-p", str(port), "-mp", str(media),
        "-m", "1", "-d", "1000", "-rtp_echo", *_kv("-key", all_keys),
    ]  # fmt: skip
    proc = _SippProcess(name, args, run_dir)
    try:
        wait_udp_bound(port, proc.proc, 10.0)
    except Exception:
        proc.finish()
        raise
    return proc


@contextlib.contextmanager
def sipp_on(port: int, scenario: str, run_dir: Path, **kw: Any) -> Iterator[_SippProcess]:
    proc = uas_on(port, scenario, run_dir, **kw)
    try:
        yield proc
    finally:
        proc.finish()  # kills it if it is still running


def digest_ok(header: str, method: str, password: str) -> tuple[bool, dict[str, str]]:
    """Check an RFC 2617 Digest (Proxy-)Authorization value against `password`."""
    params = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', header)}
    ha1 = hashlib.md5(f"{params['username']}:{params['realm']}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{params['uri']}".encode()).hexdigest()
    if params.get("qop"):
        tail = f"{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}"
    else:
        tail = f"{params['nonce']}:{ha2}"
    expected = hashlib.md5(f"{ha1}:{tail}".encode()).hexdigest()
    return params.get("response") == expected, params


def finish_uas(uas: SippUas | _SippProcess, timeout: float = 10.0) -> SippResult:
    return uas.wait(timeout)


# ------------------------------------------------------------------------ raw SIP from any address


def _sip_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _request(method: str, sock: socket.socket, dest: tuple[str, int], call_id: str, tag: str, cseq: int = 1,
             branch: str | None = None, to_tag: str = "", body: str = "") -> bytes:  # fmt: skip
    host, port = sock.getsockname()[:2]
    bot = f"sip:bot@{dest[0]}:{dest[1]}"
    return sip_request(
        method, bot, sent_by=f"{host}:{port}", branch=branch, rport=False,
        from_uri=f"sip:tester@{host}:{port}", from_tag=tag, to_tag=to_tag, call_id=call_id, cseq=cseq,
        contact=f"sip:tester@{host}:{port}", body=body,
    )  # fmt: skip


def _pcmu_offer(host: str) -> str:
    return sdp_offer(host, 4000, formats="0", rtpmaps=("0 PCMU/8000",))


def raw_invite(source: str, dest: tuple[str, int], wait_s: float) -> list[int]:
    """Send one INVITE from `source`, collect the response codes for `wait_s` s, ACK a final one.

    Ends by CANCELling (or BYEing) whatever it started, so no call outlives the helper."""
    codes: list[int] = []
    call_id, tag, branch = new_call_id(source), new_tag(), new_branch()
    with _sip_socket(source) as sock:
        sock.settimeout(0.2)
        invite = _request("INVITE", sock, dest, call_id, tag, branch=branch, body=_pcmu_offer(source))
        sock.sendto(invite, dest)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                data, _addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            text = data.decode(errors="replace")
            found = re.match(r"SIP/2\.0 (\d{3})", text)
            if not found:
                continue
            code = int(found.group(1))
            codes.append(code)
            if code >= 200:
                to_tag = (re.search(r"^To:.*;tag=([^;\s]+)", text, flags=re.M | re.I) or [None, ""])[1]
                if code < 300:  # not expected here, but never leave a call up
                    ack = _request("ACK", sock, dest, call_id, tag, to_tag=to_tag)
                    sock.sendto(ack, dest)
                    bye = _request("BYE", sock, dest, call_id, tag, cseq=2, to_tag=to_tag)
                    sock.sendto(bye, dest)
                else:
                    ack = _request("ACK", sock, dest, call_id, tag, branch=branch, to_tag=to_tag)
                    sock.sendto(ack, dest)
                break
        else:
            if codes:  # provisional only: give up on it
                sock.sendto(_request("CANCEL", sock, dest, call_id, tag, branch=branch), dest)
    return codes


def raw_options(source: str, dest: tuple[str, int], wait_s: float) -> list[int]:
    with _sip_socket(source) as sock:
        sock.settimeout(wait_s)
        sock.sendto(_request("OPTIONS", sock, dest, new_call_id(), "t1"), dest)
        try:
            data, _addr = sock.recvfrom(65535)
        except TimeoutError:
            return []
        found = re.match(r"SIP/2\.0 (\d{3})", data.decode(errors="replace"))
        return [int(found.group(1))] if found else []


# --------------------------------------------------------------------------- extra servers


@pytest.fixture(scope="module")
def trunk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that places its calls through a digest-authenticating proxy (`proxy_port` attribute)."""
    port = free_udp_port()
    env = {
        "VOICEBOT_SIP_PROXY": f"{HOST}:{port}",
        "VOICEBOT_SIP_USERNAME": AUTH_USER,
        "VOICEBOT_SIP_PASSWORD": AUTH_PASS,
    }
    for proc in serve_for_tests(tmp_path_factory, "voicebot-trunk", env):
        proc.proxy_port = port  # type: ignore[attr-defined]
        yield proc


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server taking SIP only from 127.0.0.2, and one call at a time."""
    env = {"VOICEBOT_MAX_CALLS": "1", "VOICEBOT_SIP_ALLOW": f"{ALLOWED_HOST}/32"}
    yield from serve_for_tests(tmp_path_factory, "voicebot-guarded", env)


def wait_idle(server: ServerProcess, timeout: float = 10.0) -> None:
    """Until the server has no live call (a previous test's call is over)."""
    deadline = time.monotonic() + timeout
    while True:
        _status, health = server.health()
        live = health.get("active_calls", 0) or health.get("sip", {}).get("active_calls", 0)
        if not live or time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def server_log_tail(server: ServerProcess) -> str:
    return f"\n--- {server.log_path} (tail) ---\n{server.log_tail(40)}"


# --------------------------------------------------------------------------- 1. CLI, answered


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server for the echo peer: the bot hears its own greeting back, cannot answer it, and after
    two such turns would hand off by REFER, which sipp's uas scenario aborts on (without a BYE)."""
    yield from serve_for_tests(tmp_path_factory, "echo-server", {"VOICEBOT_HANDOFF_AFTER_FAILURES": "99"})


@pytest.mark.timeout(90)
def test_cli_call_answered_by_an_echo_peer_is_recorded(echo_server: ServerProcess, tmp_path: Path) -> None:
    server = echo_server
    with SippUas(run_dir=tmp_path, scenario="uas_echo_bye.xml", rtp_echo=True, hold_ms=4000) as uas:
        to = uas.uri("alice")
        started = time.monotonic()
        result = call_cli(server, "call", to, "--timeout", "30", timeout=45)
        took = time.monotonic() - started
        peer = finish_uas(uas)
    assert result.returncode == 0, describe(result)
    call_id = cli_call_id(result)
    statuses = cli_statuses(result, call_id)
    assert statuses[-1] == "ended", describe(result)
    assert "answered" in statuses, describe(result)
    assert set(statuses) <= {"calling", "ringing", "answered", "ended"}, describe(result)
    assert re.search(rf"^{call_id}: ended \(answered", result.stdout, flags=re.M), describe(result)
    assert took < 4 + 15, f"the call took {took:.1f} s for a 4 s hold"
    assert peer.ok, peer.describe()
    assert peer.requests()[:2] == ["INVITE", "ACK"], peer.requests()
    assert "BYE" in peer.requests(), "the peer's BYE is not in its trace"

    detail = assert_outbound_record(server, call_id, "answered", to)
    assert detail.recording_path, f"no recording on the call row: {detail}"
    recording = Path(detail.recording_path)
    deadline = time.monotonic() + 10
    while not (recording.exists() and recording.stat().st_size > 44) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert recording.exists() and recording.stat().st_size > 8000, f"recording {recording} missing or empty"
    assert detail.duration_s is not None and 3.0 <= detail.duration_s <= 15.0, detail.duration_s


# ------------------------------------------------ 2. API, baresip hears the greeting


@pytest.mark.timeout(90)
@pytest.mark.skipif(not have_binaries("baresip"), reason="needs baresip")
def test_api_call_to_baresip_greets_and_hangs_up_on_delete(server: ServerProcess, tmp_path: Path) -> None:
    silence = write_wav(tmp_path / "silence.wav", np.zeros(20 * 8000, dtype=np.int16))
    with BaresipPeer(silence, run_dir=tmp_path, name="callee") as peer:
        view = dial(server, peer.uri)
        call_id = view["call_id"]
        answered, seen = follow(server, call_id, "answered", timeout=15)
        assert answered["status"] == "answered", (seen, answered)
        assert answered["outcome"] == "answered", answered
        peer.wait_event("CALL_ESTABLISHED", timeout=5)
        time.sleep(7.0)  # the greeting is ~4 s of speech
        status, hung = api(server, "DELETE", f"/calls/{call_id}")
        assert status == 200, (status, hung)
        closed = peer.wait_event("CALL_CLOSED", timeout=10)
        ended, _ = follow(server, call_id, "ended", timeout=10)
        assert ended["status"] == "ended" and ended["outcome"] == "answered", ended
        time.sleep(0.5)  # sndfile closes the WAV after the call
        recordings = peer.recordings("dec")
    assert "answered" in seen, seen
    assert "AUDIO_ERROR" not in [e.type for e in peer.events if e.t < closed.t], "baresip's WAV ran out first"
    assert recordings, f"baresip recorded nothing (events {peer.event_types()})"
    heard = transcribe(recordings[-1]).lower()
    assert "northwind" in heard or "help you" in heard, f"baresip did not hear the greeting: {heard!r}"
    detail = assert_outbound_record(server, call_id, "answered", peer.uri)
    assert detail.turns is not None
    status, missing = api(server, "DELETE", f"/calls/{call_id}")
    assert status in (200, 404), (status, missing)  # hanging up an ended call is harmless


# -------------------------------------------------- 3-6. busy, no answer, rejected, failed


@pytest.mark.timeout(60)
def test_cli_call_to_a_busy_peer(server: ServerProcess, tmp_path: Path) -> None:
    with SippUas(run_dir=tmp_path, scenario="uas_busy.xml", rtp_echo=False) as uas:
        to = uas.uri("alice")
        result = call_cli(server, "call", to, "--timeout", "20", timeout=40)
        peer = finish_uas(uas)
    assert result.returncode == 1, describe(result)
    call_id = cli_call_id(result)
    assert re.search(rf"^{call_id}: ended \(busy", result.stdout, flags=re.M), describe(result)
    assert "answered" not in cli_statuses(result, call_id), describe(result)
    assert 486 in peer.status_codes() and "ACK" in peer.requests(), peer.describe()
    detail = assert_outbound_record(server, call_id, "busy", to)
    assert detail.ended_at is not None and "486" in detail.end_reason, detail


@pytest.mark.timeout(60)
def test_cli_no_answer_cancels_while_another_call_comes_in(server: ServerProcess, tmp_path: Path) -> None:
    """--ring-timeout 3 against a callee that rings forever: we CANCEL, it answers 487, outcome
    no-answer; meanwhile an inbound call to the same server is answered and completes."""
    inbound: dict[str, SippResult] = {}

    def call_in() -> None:
        time.sleep(0.5)  # while the outbound call rings
        inbound["uac"] = sipp_uac(
            f"{HOST}:{server.sip_port}", run_dir=tmp_path / "inbound", hold_ms=2000, timeout=20
        )

    with SippUas(run_dir=tmp_path, scenario="uas_noanswer.xml", rtp_echo=False) as uas:
        to = uas.uri("alice")
        caller = threading.Thread(target=call_in, daemon=True)
        caller.start()
        result = call_cli(server, "call", to, "--ring-timeout", "3", "--timeout", "20", timeout=40)
        peer = finish_uas(uas)
        caller.join(25)
    assert result.returncode == 1, describe(result)
    call_id = cli_call_id(result)
    assert re.search(rf"^{call_id}: ended \(no-answer", result.stdout, flags=re.M), describe(result)
    assert "ringing" in cli_statuses(result, call_id), describe(result)
    assert "CANCEL" in peer.requests(), f"no CANCEL from the bot:\n{peer.messages()[-3000:]}"
    assert 487 in peer.status_codes(), peer.describe()
    assert peer.ok, peer.describe()
    detail = assert_outbound_record(server, call_id, "no-answer", to)
    assert detail.duration_s is not None and 2.5 <= detail.duration_s <= 5.0, (
        f"no-answer after {detail.duration_s} s with a 3 s ring timeout"
    )
    uac = inbound.get("uac")
    assert uac is not None, "the inbound call did not finish"
    assert uac.ok and uac.counter("SuccessfulCall") == 1, uac.describe()


@pytest.mark.timeout(60)
def test_api_call_declined_is_rejected(server: ServerProcess, tmp_path: Path) -> None:
    with SippUas(run_dir=tmp_path, scenario="uas_reject.xml", rtp_echo=False) as uas:
        view = dial(server, uas.uri("alice"))
        ended, seen = follow(server, view["call_id"], "ended", timeout=15)
        peer = finish_uas(uas)
    assert ended["status"] == "ended" and ended["outcome"] == "rejected", (ended, seen)
    assert "603" in ended["reason"], ended
    assert 603 in peer.status_codes() and "ACK" in peer.requests(), peer.describe()
    assert_outbound_record(server, view["call_id"], "rejected", uas.uri("alice"))


@pytest.mark.timeout(60)
def test_cli_call_to_an_unavailable_peer_failed(server: ServerProcess, tmp_path: Path) -> None:
    with SippUas(run_dir=tmp_path, scenario="uas_unavailable.xml", rtp_echo=False) as uas:
        to = uas.uri("alice")
        result = call_cli(server, "call", to, "--timeout", "20", timeout=40)
        peer = finish_uas(uas)
    assert result.returncode == 1, describe(result)
    call_id = cli_call_id(result)
    assert re.search(rf"^{call_id}: ended \(failed", result.stdout, flags=re.M), describe(result)
    assert 503 in peer.status_codes() and "ACK" in peer.requests(), peer.describe()
    assert_outbound_record(server, call_id, "failed", to)


@pytest.mark.timeout(60)
def test_bad_targets_are_refused(server: ServerProcess) -> None:
    result = call_cli(server, "call", "not-a-uri", "--timeout", "5", timeout=30)
    assert result.returncode != 0, describe(result)
    assert "not-a-uri" in result.stderr and "error" in result.stderr.lower(), describe(result)
    assert "calling" not in result.stdout, describe(result)
    for bad in ("mailto:x", "not-a-uri", "sip:"):
        status, body = api(server, "POST", "/calls", {"to": bad})
        assert status == 400, (bad, status, body)
        assert body.get("detail"), (bad, body)
    status, body = api(server, "POST", "/calls", {"to": "sip:alice@127.0.0.1:9", "ring_timeout": -1})
    assert status == 400, (status, body)
    status, body = api(server, "GET", "/calls/out-doesnotexist")
    assert status == 404, (status, body)


# --------------------------------------------------------------------------- 7. digest auth through a proxy


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "scenario, header", [("uas_auth.xml", "Authorization"), ("uas_auth407.xml", "Proxy-Authorization")]
)
def test_call_through_a_proxy_answers_the_digest_challenge(
    trunk_server: ServerProcess, tmp_path: Path, scenario: str, header: str
) -> None:
    with sipp_on(trunk_server.proxy_port, scenario, tmp_path) as proxy:  # type: ignore[attr-defined]
        view = dial(trunk_server, BEHIND_PROXY)
        answered, seen = follow(trunk_server, view["call_id"], "answered", timeout=15)
        assert answered["status"] == "answered", (answered, seen, server_log_tail(trunk_server))
        time.sleep(1.0)
        status, _ = api(trunk_server, "DELETE", f"/calls/{view['call_id']}")
        assert status == 200
        ended, _ = follow(trunk_server, view["call_id"], "ended", timeout=10)
        peer = proxy.wait(10)
    assert ended["outcome"] == "answered", ended
    assert peer.ok, peer.describe()
    challenge = 401 if header == "Authorization" else 407
    assert peer.status_codes()[:2] == [challenge, 200], peer.status_codes()
    invites = re.findall(r"^INVITE (\S+) SIP/2\.0", peer.messages(), flags=re.M)
    assert invites == [BEHIND_PROXY, BEHIND_PROXY], f"Request-URIs via the proxy: {invites}"
    creds = peer.logged(f"{header}:")
    assert creds, f"no {header} in the second INVITE:\n{peer.messages()[-3000:]}"
    ok, params = digest_ok(creds[0], "INVITE", AUTH_PASS)
    assert ok and params["username"] == AUTH_USER and params["realm"] == "sipp.test", params
    if header == "Authorization":
        assert peer.logged("authentication ok") == [""], peer.log_lines()  # sipp's own <verifyauth>
    assert "BYE" in peer.requests()
    assert_outbound_record(trunk_server, view["call_id"], "answered", BEHIND_PROXY)


@pytest.mark.timeout(60)
def test_call_through_a_proxy_with_a_wrong_password_is_refused(
    trunk_server: ServerProcess, tmp_path: Path
) -> None:
    """The proxy expects another password: it answers our credentials with 403 (uas_auth.xml). Refused
    credentials are our set-up failure, not the callee declining: outcome failed."""
    keys = {"auth_pass": "not-the-bots-password"}
    with sipp_on(trunk_server.proxy_port, "uas_auth.xml", tmp_path, keys=keys) as proxy:  # type: ignore[attr-defined]
        view = dial(trunk_server, BEHIND_PROXY)
        ended, seen = follow(trunk_server, view["call_id"], "ended", timeout=15)
        peer = proxy.wait(10)
    assert "answered" not in seen, seen
    assert peer.status_codes() == [401, 403], peer.status_codes()
    assert peer.logged("authentication failed") == [""], peer.log_lines()
    assert ended["outcome"] == "failed" and "403" in ended["reason"], ended
    assert peer.requests().count("INVITE") == 2, "the bot retried a refused password"
    assert_outbound_record(trunk_server, view["call_id"], "failed", BEHIND_PROXY)


# --------------------------------------------------------------------------- 8. allowlist and capacity


@pytest.mark.timeout(60)
def test_sources_outside_the_allowlist_are_dropped_silently(
    guarded_server: ServerProcess, tmp_path: Path
) -> None:
    dest = (HOST, guarded_server.sip_port)
    assert raw_options(ALLOWED_HOST, dest, 3.0) == [200], "the allowed source gets no OPTIONS answer"
    assert raw_options(HOST, dest, 2.0) == [], "an OPTIONS from outside the allowlist was answered"
    assert raw_invite(HOST, dest, 2.0) == [], "an INVITE from outside the allowlist was answered"
    allowed = sipp_uac(
        f"{HOST}:{guarded_server.sip_port}", run_dir=tmp_path / "allowed", hold_ms=1000, timeout=20,
        extra=["-i", ALLOWED_HOST],
    )  # fmt: skip
    assert allowed.ok and allowed.counter("SuccessfulCall") == 1, allowed.describe()
    assert re.search(rf"^Via: SIP/2\.0/UDP {re.escape(ALLOWED_HOST)}:", allowed.messages(), flags=re.M), (
        "sipp did not call from the allowed address"
    )


@pytest.mark.timeout(60)
def test_at_capacity_calls_in_get_486_and_calls_out_get_503(
    guarded_server: ServerProcess, tmp_path: Path
) -> None:
    wait_idle(guarded_server)
    target = f"{HOST}:{guarded_server.sip_port}"
    holder: dict[str, SippResult] = {}

    def hold_the_line() -> None:
        holder["uac"] = sipp_uac(
            target, run_dir=tmp_path / "holder", hold_ms=6000, timeout=25, extra=["-i", ALLOWED_HOST]
        )

    thread = threading.Thread(target=hold_the_line, daemon=True)
    thread.start()
    try:
        time.sleep(2.0)  # the first call is up
        assert "uac" not in holder, holder["uac"].describe() if "uac" in holder else ""
        codes = raw_invite(ALLOWED_HOST, (HOST, guarded_server.sip_port), 3.0)
        assert codes and codes[-1] == 486, (
            f"second INVITE at capacity got {codes}{server_log_tail(guarded_server)}"
        )
        status, body = api(guarded_server, "POST", "/calls", {"to": "sip:alice@127.0.0.2:9"})
        assert status == 503 and "capacity" in body.get("detail", ""), (status, body)
    finally:
        thread.join(30)
    first = holder.get("uac")
    assert first is not None, "the first call did not finish"
    assert first.ok and first.counter("SuccessfulCall") == 1, first.describe()
    # Once it is over, there is room again.
    wait_idle(guarded_server)
    again = sipp_uac(target, run_dir=tmp_path / "again", hold_ms=500, timeout=20, extra=["-i", ALLOWED_HOST])
    assert again.ok, again.describe()
