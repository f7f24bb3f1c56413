"""Real SIP peers for end-to-end tests and benchmarks: sipp, baresip and linphonec on 127.0.0.1.

Every process is bounded. Everything a peer writes (stdout/stderr, sipp message/error/log traces,
baresip recordings, linphone logs) lands in a caller-given run directory (use pytest's ``tmp_path``)
so failures can be debugged. Every subprocess runs in its own process group and is killed (SIGTERM,
then SIGKILL) on timeout, on ``stop()`` and when its context manager exits. Ports (SIP, RTP,
control) are picked free on loopback.

Use it as ``from testkit import sip_peers as sp``. Main entry points (README.md next to this file has
the command lines and the tools' quirks):

- ``run_sipp(args, ...)``: any sipp run, returns a ``SippResult`` (exit code, stats counters, traces).
- ``sipp_uac(...)``, ``sipp_uac_pcap_dtmf(...)``, ``sipp_uac_rtp_stream(...)``, ``sipp_uac_transfer(...)``,
  ``sipp_uac_options(...)``, ``sipp_uac_auth(...)``, ``sipp_uac_cancel(...)``: one-call callers.
- ``SippUas``: a background sipp callee (built-in ``uas`` or a scenario from ``scenarios/``).
- ``RtpSink``: a Python RTP receiver that records packets (and RFC 2833 digits) for assertions.
- ``BaresipPeer``: baresip caller/auto-answer callee driven over ctrl_tcp, recording what it hears.
- ``run_linphone_call(...)``: linphonec places one call, talks a few seconds and hangs up.

Modules: ``common`` (tool paths, pcaps, caller audio files), ``sipp``, ``baresip``, ``linphone``,
``rtp``; ports come from ``testkit.net``, process control from ``testkit.procs``.
"""

from testkit.net import free_udp_port, free_udp_port_range, udp_port_bound, wait_udp_bound
from testkit.procs import kill_group, spawn, tail
from testkit.sip_peers.baresip import BARESIP_CONFIG, BaresipEvent, BaresipPeer
from testkit.sip_peers.common import (
    BARESIP_BIN,
    DTMF_PCAPS,
    G711A_PCAP,
    HOST,
    LINPHONEC_BIN,
    PCAP_DIR,
    RTP_EVENT_DIGITS,
    SCENARIO_DIR,
    SIPP_BIN,
    QuestionAudio,
    have_binaries,
    make_question_audio,
    wav_seconds,
)
from testkit.sip_peers.linphone import LINPHONE_RC, LinphoneResult, run_linphone_call
from testkit.sip_peers.rtp import RtpPacket, RtpSink, parse_rtp, read_pcap_rtp, rfc2833_digits
from testkit.sip_peers.sipp import (
    SippResult,
    SippUas,
    run_sipp,
    sipp_uac,
    sipp_uac_auth,
    sipp_uac_cancel,
    sipp_uac_options,
    sipp_uac_pcap_dtmf,
    sipp_uac_rtp_stream,
    sipp_uac_transfer,
    sipp_uas,
    ulaw_duration_ms,
)

__all__ = [
    "BARESIP_BIN",
    "BARESIP_CONFIG",
    "DTMF_PCAPS",
    "G711A_PCAP",
    "HOST",
    "LINPHONEC_BIN",
    "LINPHONE_RC",
    "PCAP_DIR",
    "RTP_EVENT_DIGITS",
    "SCENARIO_DIR",
    "SIPP_BIN",
    "BaresipEvent",
    "BaresipPeer",
    "LinphoneResult",
    "QuestionAudio",
    "RtpPacket",
    "RtpSink",
    "SippResult",
    "SippUas",
    "free_udp_port",
    "free_udp_port_range",
    "have_binaries",
    "kill_group",
    "make_question_audio",
    "parse_rtp",
    "read_pcap_rtp",
    "rfc2833_digits",
    "run_linphone_call",
    "run_sipp",
    "sipp_uac",
    "sipp_uac_auth",
    "sipp_uac_cancel",
    "sipp_uac_options",
    "sipp_uac_pcap_dtmf",
    "sipp_uac_rtp_stream",
    "sipp_uac_transfer",
    "sipp_uas",
    "spawn",
    "tail",
    "udp_port_bound",
    "ulaw_duration_ms",
    "wait_udp_bound",
    "wav_seconds",
]
