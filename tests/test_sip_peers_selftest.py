"""Self-tests of the SIP test peers (testkit.sip_peers) against each other, before the bot exists.

Every peer talks to another peer on 127.0.0.1; each test is bounded. Skipped when sipp, baresip or
linphonec is missing (the Makefile's `system` target installs them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from testkit import sip_peers as sp

pytestmark = pytest.mark.skipif(
    not sp.have_binaries("sipp", "baresip", "linphonec", "espeak-ng", "sox"),
    reason="SIP peers (sip-tester, baresip-core, linphone-cli, espeak-ng, sox) not installed",
)
needs_raw_socket = pytest.mark.skipif(os.geteuid() != 0, reason="sipp play_pcap_audio needs a raw socket")


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> sp.QuestionAudio:
    out = tmp_path_factory.mktemp("audio")
    return sp.make_question_audio("How long does shipping take?", out, trailing_silence_s=2.0)


@pytest.mark.timeout(10)
def test_bundled_pcaps_hold_expected_media() -> None:
    audio = sp.read_pcap_rtp(sp.G711A_PCAP)
    assert {p.pt for p in audio} == {8}
    assert len(audio) == 236 and {len(p.payload) for p in audio} == {240}  # 30 ms PCMA packets
    for digit, path in sp.DTMF_PCAPS.items():
        assert sp.rfc2833_digits(sp.read_pcap_rtp(path)) == digit, path


@pytest.mark.timeout(30)
def test_sipp_uac_to_sipp_uas(tmp_path: Path) -> None:
    with sp.SippUas(run_dir=tmp_path, scenario="uas") as uas:
        res = sp.sipp_uac(uas.target, run_dir=tmp_path, hold_ms=300, timeout=15)
        assert res.ok, res.describe()
        assert res.counter("SuccessfulCall") == 1
        assert uas.wait(10).ok
    assert res.requests() == ["INVITE", "ACK", "BYE"]


@needs_raw_socket
@pytest.mark.timeout(40)
def test_sipp_pcap_audio_and_dtmf_reach_callee(tmp_path: Path) -> None:
    with (
        sp.RtpSink(echo=True) as sink,
        sp.SippUas(run_dir=tmp_path, rtp_echo=False, sdp_port=sink.port) as uas,
    ):
        res = sp.sipp_uac_pcap_dtmf(uas.target, run_dir=tmp_path, tail_ms=500)
        assert res.ok, res.describe()
        assert uas.wait(10).ok
    assert sink.count(8) == 236
    assert sink.digits() == "123"
    assert uas.result is not None and uas.result.logged("offer:") == [
        f"m=audio {sink.packets[0].src[1]} RTP/AVP 8 101"
    ]


@pytest.mark.timeout(30)
def test_sipp_rtp_stream_plays_question(tmp_path: Path, question: sp.QuestionAudio) -> None:
    with sp.RtpSink() as sink, sp.SippUas(run_dir=tmp_path, rtp_echo=False, sdp_port=sink.port) as uas:
        res = sp.sipp_uac_rtp_stream(uas.target, question.ulaw, run_dir=tmp_path, wait_ms=300)
        assert res.ok, res.describe()
        uas.wait(10)
    expected = round(question.speech_s / 0.02)
    assert abs(sink.count(0) - expected) <= 2
    assert {len(p.payload) for p in sink.packets} == {160}


@pytest.mark.timeout(30)
def test_baresip_caller_to_sipp_uas_echo(tmp_path: Path, question: sp.QuestionAudio) -> None:
    with sp.SippUas(run_dir=tmp_path) as uas, sp.BaresipPeer(question.wav, run_dir=tmp_path) as peer:
        t_dial = peer.call(uas.uri("bot"))
        established = peer.wait_event("CALL_ESTABLISHED", 10)
        closed = peer.wait_event("CALL_CLOSED", question.total_s + 10)  # source WAV ends -> hangup
        assert established.t >= t_dial
        assert closed.param == "end of file"
        assert uas.wait(10).ok
    (dec,) = peer.recordings("dec")
    assert sp.wav_seconds(dec) > 0.5 * question.speech_s  # the echo of what it said


@pytest.mark.timeout(30)
def test_sipp_uac_to_baresip_auto_answer(tmp_path: Path, question: sp.QuestionAudio) -> None:
    with sp.BaresipPeer(question.wav, run_dir=tmp_path, user="callee") as peer:
        target = f"{sp.HOST}:{peer.sip_port}"
        res = sp.sipp_uac(target, run_dir=tmp_path, service="callee", hold_ms=1500, extra=["-rtp_echo"])
        assert res.ok, res.describe()
        peer.wait_event("CALL_ESTABLISHED", 5)
        peer.wait_event("CALL_CLOSED", 5)
    assert 200 in res.status_codes()
    (dec,) = peer.recordings("dec")
    assert sp.wav_seconds(dec) > 0.5  # sipp echoed baresip's audio back


@pytest.mark.timeout(40)
def test_linphonec_to_sipp_uas(tmp_path: Path) -> None:
    with sp.SippUas(run_dir=tmp_path) as uas:
        res = sp.run_linphone_call(uas.uri("bot"), run_dir=tmp_path, talk_s=2, timeout=25)
        assert res.ok, sp.tail(res.stdout_path)
        assert uas.wait(10).ok
    offer = uas.result.logged("offer:")[0] if uas.result else ""
    pts = offer.split("RTP/AVP")[1].split()
    assert {"0", "8", "101"} <= set(pts) and len(pts) >= 6, offer


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("scenario", "code"), [("uas_busy.xml", 486), ("uas_reject.xml", 603)])
def test_refusing_callees(tmp_path: Path, scenario: str, code: int) -> None:
    with sp.SippUas(run_dir=tmp_path, scenario=scenario, rtp_echo=False) as uas:
        res = sp.sipp_uac(uas.target, run_dir=tmp_path, timeout=10)
        assert res.returncode == 1  # the built-in uac expects 180/200: the call fails, as it should
        assert code in res.status_codes()
        assert "ACK" in res.requests()
        assert uas.wait(10).ok


@pytest.mark.timeout(20)
def test_noanswer_callee_handles_cancel(tmp_path: Path) -> None:
    with sp.SippUas(run_dir=tmp_path, scenario="uas_noanswer.xml", rtp_echo=False) as uas:
        res = sp.sipp_uac_cancel(uas.target, run_dir=tmp_path)
        assert res.ok, res.describe()
        assert uas.wait(10).ok
    assert res.requests() == ["INVITE", "CANCEL", "ACK"]
    assert res.status_codes()[-2:] == [200, 487]
    assert re.search(r"487 Request Terminated.*?CSeq: 1 INVITE", res.messages(), flags=re.S)


@pytest.mark.timeout(30)
def test_auth_callee_accepts_right_password_only(tmp_path: Path) -> None:
    with sp.SippUas(run_dir=tmp_path / "good", scenario="uas_auth.xml") as uas:
        res = sp.sipp_uac_auth(uas.target, run_dir=tmp_path / "good", user="bot", password="secret")
        assert res.ok, res.describe()
        assert uas.wait(10).ok
    assert res.status_codes()[:1] == [401] and 200 in res.status_codes()
    assert uas.result is not None and "authentication ok" in uas.result.log_lines()
    with sp.SippUas(run_dir=tmp_path / "bad", scenario="uas_auth.xml") as uas:
        res = sp.sipp_uac_auth(uas.target, run_dir=tmp_path / "bad", user="bot", password="wrong")
        assert not res.ok
        assert 403 in res.status_codes()


@pytest.mark.timeout(40)
def test_transfer_caller_accepts_refer(tmp_path: Path, question: sp.QuestionAudio) -> None:
    keys = {"refer_target": "agent@127.0.0.1:5099"}
    with sp.SippUas(run_dir=tmp_path, scenario="uas_refer.xml", hold_ms=1000, keys=keys) as uas:
        res = sp.sipp_uac_transfer(uas.target, question.ulaw, run_dir=tmp_path)
        assert res.ok, res.describe()
        assert uas.wait(10).ok, uas.result
    assert res.refer_to == "<sip:agent@127.0.0.1:5099>"
    assert "BYE received after transfer" in res.log_lines()
    assert res.requests() == ["INVITE", "ACK", "REFER", "NOTIFY", "BYE"]


@pytest.mark.timeout(20)
def test_options_probe(tmp_path: Path) -> None:
    with sp.SippUas(run_dir=tmp_path, scenario="uas", extra=["-aa"], rtp_echo=False) as uas:
        res = sp.sipp_uac_options(uas.target, run_dir=tmp_path)
        assert res.ok, res.describe()
        assert res.status_codes() == [200]
