"""Real SIP peers for end-to-end tests: sipp, baresip and linphonec on 127.0.0.1, every process bounded.

Everything a peer writes (stdout/stderr, sipp message/error/log traces, baresip recordings, linphone
logs) lands in a caller-given run directory (use pytest's ``tmp_path``) so failures can be debugged.
Every subprocess runs in its own process group and is killed (SIGTERM, then SIGKILL) on timeout, on
``stop()`` and when its context manager exits. Ports (SIP, RTP, control) are picked free on loopback.

Main entry points (see tests/sip_peers.md for command lines and quirks):

- ``run_sipp(args, ...)``: any sipp run, returns a ``SippResult`` (exit code, stats counters, traces).
- ``sipp_uac(...)``, ``sipp_uac_pcap_dtmf(...)``, ``sipp_uac_rtp_stream(...)``, ``sipp_uac_transfer(...)``,
  ``sipp_uac_options(...)``, ``sipp_uac_auth(...)``, ``sipp_uac_cancel(...)``: one-call callers.
- ``SippUas``: a background sipp callee (built-in ``uas`` or a scenario from tests/sipp/).
- ``RtpSink``: a Python RTP receiver that records packets (and RFC 2833 digits) for assertions.
- ``BaresipPeer``: baresip caller/auto-answer callee driven over ctrl_tcp, recording what it hears.
- ``run_linphone_call(...)``: linphonec places one call, talks a few seconds and hangs up.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SIPP_BIN = shutil.which("sipp") or "/usr/bin/sipp"
BARESIP_BIN = shutil.which("baresip") or "/usr/bin/baresip"
LINPHONEC_BIN = shutil.which("linphonec") or "/usr/bin/linphonec"
SCENARIO_DIR = Path(__file__).resolve().parent / "sipp"
PCAP_DIR = Path("/usr/share/sip-tester")
G711A_PCAP = PCAP_DIR / "g711a.pcap"
#: RFC 2833 pcaps shipped with sipp: file name -> the one digit it carries (checked by the self-test).
DTMF_PCAPS: dict[str, Path] = {
    **{str(d): PCAP_DIR / f"dtmf_2833_{d}.pcap" for d in range(10)},
    "*": PCAP_DIR / "dtmf_2833_star.pcap",
    "#": PCAP_DIR / "dtmf_2833_pound.pcap",
}
RTP_EVENT_DIGITS = "0123456789*#ABCD"
STOP_GRACE_S = 3.0


def have_binaries(*names: str) -> bool:
    return all(shutil.which(n) for n in names)


# --------------------------------------------------------------------------------------------- ports


def free_udp_port(host: str = HOST) -> int:
    """A UDP port free right now on ``host`` (bind-to-0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_tcp_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port_range(count: int, host: str = HOST, even: bool = True) -> int:
    """First port of ``count`` consecutive free UDP ports (RTP/RTCP pairs, sipp's -mp and -mp+2)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if even:
            base &= ~1
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports")


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to UDP ``port`` (any address), read from /proc without binding."""
    hexport = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                parts = line.split()
                if len(parts) > 1 and parts[1].endswith(hexport):
                    return True
    return False


def wait_udp_bound(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if udp_port_bound(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before binding UDP {port}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing bound UDP port {port} within {timeout} s")


# ----------------------------------------------------------------------------------------- processes


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_path: Path,
    stdin: int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, stdout+stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` s; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Leftover children (none expected) die with the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return int(proc.returncode)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


# ---------------------------------------------------------------------------------------------- sipp


@dataclass
class SippResult:
    """Outcome of one sipp process. ``returncode``: 0 all calls ok, 1 some failed, 97/99/255/254 see
    ``sipp -h``; -9/-15 or ``timed_out`` when the harness killed it."""

    name: str
    argv: list[str]
    returncode: int
    timed_out: bool
    run_dir: Path
    stdout_path: Path
    messages_path: Path
    errors_path: Path
    logs_path: Path
    stats_path: Path
    counters: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def counter(self, name: str) -> int:
        """Cumulative stats counter, e.g. ``counter("SuccessfulCall")``, ``counter("FailedCall")``."""
        value = self.counters.get(f"{name}(C)", self.counters.get(name, "0"))
        try:
            return int(float(value))
        except ValueError:
            return 0

    def messages(self) -> str:
        return _read(self.messages_path)

    def errors(self) -> str:
        return _read(self.errors_path)

    def log_lines(self) -> list[str]:
        """Lines written by <log> actions (needs -trace_logs, which the harness always passes)."""
        return [ln for ln in _read(self.logs_path).splitlines() if ln.strip()]

    def status_codes(self) -> list[int]:
        """Status codes of every response in the message trace, sent or received, in order."""
        return [int(m) for m in re.findall(r"^SIP/2\.0 (\d{3}) ", self.messages(), flags=re.M)]

    def requests(self) -> list[str]:
        return re.findall(r"^([A-Z]+) \S+ SIP/2\.0\r?$", self.messages(), flags=re.M)

    def logged(self, prefix: str) -> list[str]:
        """Values of <log> lines starting with ``prefix`` (prefix stripped)."""
        return [ln[len(prefix) :].strip() for ln in self.log_lines() if ln.startswith(prefix)]

    @property
    def refer_to(self) -> str | None:
        """Refer-To captured by uac_transfer.xml (``REFER Refer-To: <sip:...>`` log line)."""
        found = self.logged("REFER Refer-To:")
        return found[0] if found else None

    def describe(self) -> str:
        return (
            f"sipp {self.name}: rc={self.returncode} timed_out={self.timed_out}\n$ {' '.join(self.argv)}\n"
            f"--- errors ---\n{tail(self.errors_path)}\n--- stdout ---\n{tail(self.stdout_path, 20)}"
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _parse_stats(path: Path) -> dict[str, str]:
    try:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return {k: v for k, v in zip(rows[0], rows[-1], strict=False) if k}


def _scenario_args(scenario: str) -> list[str]:
    """``uac``/``uas`` (built-in) -> -sn; ``foo.xml`` -> tests/sipp/foo.xml; a path -> as is."""
    if scenario.endswith(".xml"):
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SCENARIO_DIR / scenario
        return ["-sf", str(path)]
    return ["-sn", scenario]


def _prepare_run_dir(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / "pcap"  # what play_pcap_audio="pcap/x.pcap" resolves to (sipp runs with cwd=run_dir)
    if not link.exists():
        link.symlink_to(PCAP_DIR)


class _SippProcess:
    def __init__(self, name: str, args: Sequence[str], run_dir: Path) -> None:
        _prepare_run_dir(run_dir)
        self.name = name
        self.run_dir = run_dir
        self.stdout_path = run_dir / f"{name}.stdout.log"
        self.messages_path = run_dir / f"{name}.messages.log"
        self.errors_path = run_dir / f"{name}.errors.log"
        self.logs_path = run_dir / f"{name}.logs.log"
        self.stats_path = run_dir / f"{name}.stats.csv"
        self.control_port = free_udp_port()
        self.argv = [
            SIPP_BIN, *args,
            "-nostdin", "-ci", HOST, "-cp", str(self.control_port),
            "-trace_msg", "-message_file", str(self.messages_path),
            "-trace_err", "-error_file", str(self.errors_path),
            "-trace_logs", "-log_file", str(self.logs_path),
            "-trace_stat", "-stf", str(self.stats_path), "-fd", "1",
        ]  # fmt: skip
        self.proc = spawn(self.argv, cwd=run_dir, log_path=self.stdout_path)
        self.timed_out = False

    def wait(self, timeout: float) -> SippResult:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
        return self.finish()

    def finish(self) -> SippResult:
        rc = kill_group(self.proc)
        return SippResult(
            name=self.name, argv=self.argv, returncode=rc, timed_out=self.timed_out, run_dir=self.run_dir,
            stdout_path=self.stdout_path, messages_path=self.messages_path, errors_path=self.errors_path,
            logs_path=self.logs_path, stats_path=self.stats_path, counters=_parse_stats(self.stats_path),
        )  # fmt: skip


def run_sipp(args: Sequence[str], *, run_dir: Path, timeout: float = 30.0, name: str = "sipp") -> SippResult:
    """Run sipp with ``args`` (scenario, target, ports...) in the foreground, bounded by ``timeout``.

    The harness adds control socket, trace and stats options; cwd is ``run_dir`` (with a ``pcap``
    symlink to /usr/share/sip-tester)."""
    return _SippProcess(name, args, run_dir).wait(timeout)


def _kv(flag: str, values: dict[str, Any] | None) -> list[str]:
    out: list[str] = []
    for key, value in (values or {}).items():
        out += [flag, key, str(value)]
    return out


def sipp_uac(
    target: str,
    *,
    run_dir: Path,
    scenario: str = "uac",
    service: str = "bot",
    hold_ms: int = 1000,
    calls: int = 1,
    timeout: float = 30.0,
    sets: dict[str, Any] | None = None,
    keys: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
    name: str = "uac",
) -> SippResult:
    """Place ``calls`` calls (one at a time) to ``target`` ("127.0.0.1:5060") with a UAC scenario.

    ``hold_ms`` is sipp's -d (the length of <pause/> without milliseconds). ``sets``/``keys`` become
    ``-set name value`` (scenario globals) and ``-key name value`` ([name] keywords)."""
    media = free_udp_port_range(4)
    args = [
        target, *_scenario_args(scenario), "-s", service, "-i", HOST, "-p", str(free_udp_port()),
        "-mp", str(media), "-m", str(calls), "-l", "1", "-d", str(hold_ms),
        *_kv("-set", sets), *_kv("-key", keys), *extra,
    ]  # fmt: skip
    return run_sipp(args, run_dir=run_dir, timeout=timeout, name=name)


def sipp_uac_pcap_dtmf(target: str, *, run_dir: Path, tail_ms: int = 1000, **kw: Any) -> SippResult:
    """Call, play g711a.pcap (PCMA, 30 ms packets, 7.05 s) then RFC 2833 digits "123", hang up.

    Needs root/CAP_NET_RAW (sipp sends pcaps through a raw socket). About 10.5 s + tail_ms."""
    kw.setdefault("timeout", 40.0)
    return sipp_uac(target, run_dir=run_dir, scenario="uac_pcap_dtmf.xml", sets={"tail_ms": tail_ms}, **kw)


def ulaw_duration_ms(path: Path) -> int:
    return int(path.stat().st_size / 8)


def _stage_stream(run_dir: Path, audio_ulaw: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(audio_ulaw, run_dir / "rtp_stream.ulaw")


def sipp_uac_rtp_stream(
    target: str, audio_ulaw: Path, *, run_dir: Path, wait_ms: int = 6000, **kw: Any
) -> SippResult:
    """Call offering PCMU, stream ``audio_ulaw`` (raw 8 kHz mu-law, see ``make_question_audio``) as
    RTP pt 0, stay ``wait_ms`` on the line to hear the answer, then BYE."""
    _stage_stream(run_dir, audio_ulaw)
    play_ms = ulaw_duration_ms(audio_ulaw)
    kw.setdefault("timeout", (play_ms + wait_ms) / 1000 + 20)
    sets = {"play_ms": play_ms, "wait_ms": wait_ms}
    return sipp_uac(target, run_dir=run_dir, scenario="uac_rtp_stream.xml", sets=sets, **kw)


def sipp_uac_transfer(target: str, audio_ulaw: Path, *, run_dir: Path, **kw: Any) -> SippResult:
    """Call, speak ``audio_ulaw``, accept the bot's REFER (202 + NOTIFY 200 sipfrag), take its BYE.

    ``result.refer_to`` is the Refer-To value (None when no REFER came within 30 s)."""
    _stage_stream(run_dir, audio_ulaw)
    kw.setdefault("timeout", 75.0)
    sets = {"play_ms": ulaw_duration_ms(audio_ulaw)}
    return sipp_uac(target, run_dir=run_dir, scenario="uac_transfer.xml", sets=sets, name="transfer", **kw)


def sipp_uac_options(target: str, *, run_dir: Path, timeout: float = 10.0) -> SippResult:
    """One OPTIONS, expect 200 (liveness probe, e.g. after fuzzing)."""
    return sipp_uac(target, run_dir=run_dir, scenario="uac_options.xml", timeout=timeout, name="options")


def sipp_uac_auth(
    target: str, *, run_dir: Path, user: str, password: str, hold_ms: int = 500, timeout: float = 20.0
) -> SippResult:
    """Call that answers a 401/407 Digest challenge with ``user``/``password`` (sipp -au/-ap)."""
    return sipp_uac(
        target, run_dir=run_dir, scenario="uac_auth.xml", hold_ms=hold_ms, timeout=timeout, name="uac_auth",
        extra=["-au", user, "-ap", password],
    )  # fmt: skip


def sipp_uac_cancel(target: str, *, run_dir: Path, timeout: float = 20.0) -> SippResult:
    """Call that CANCELs 500 ms after 180 Ringing, expects 200 (CANCEL) + 487 (INVITE), ACKs."""
    return sipp_uac(target, run_dir=run_dir, scenario="uac_cancel.xml", timeout=timeout, name="uac_cancel")


class SippUas:
    """Background sipp callee on a free loopback port (an outbound call's far end).

    ``scenario``: "uas_echo.xml" (default: 100/180/200 with PCMU+PCMA+telephone-event, quick exit),
    "uas" (sipp built-in, answers PCMU only, 4 s timewait), "uas_busy.xml", "uas_noanswer.xml",
    "uas_reject.xml", "uas_auth.xml", "uas_refer.xml" or a path. ``rtp_echo`` echoes RTP back from
    ``media_port``; ``sdp_port`` (e.g. an ``RtpSink``'s port) replaces the port in our SDP answer
    (custom scenarios only). Use as a context manager, or ``wait()``/``stop()``."""

    def __init__(
        self,
        *,
        run_dir: Path,
        scenario: str = "uas_echo.xml",
        rtp_echo: bool = True,
        sdp_port: int | None = None,
        calls: int = 1,
        hold_ms: int = 1000,
        keys: dict[str, Any] | None = None,
        extra: Sequence[str] = (),
        name: str = "uas",
        start_timeout: float = 10.0,
    ) -> None:
        self.port = free_udp_port()
        self.media_port = free_udp_port_range(4)
        self.sdp_port = sdp_port if sdp_port is not None else self.media_port
        all_keys: dict[str, Any] = {
            "sdp_port": self.sdp_port, "auth_user": "bot", "auth_pass": "secret",
            "refer_target": "agent@127.0.0.1:5099", **(keys or {}),
        }  # fmt: skip
        args = [
            *_scenario_args(scenario), "-i", HOST, "-p", str(self.port), "-mp", str(self.media_port),
            "-m", str(calls), "-d", str(hold_ms), *(["-rtp_echo"] if rtp_echo else []),
            *_kv("-key", all_keys), *extra,
        ]  # fmt: skip
        self._run = _SippProcess(name, args, run_dir)
        self.started_at = time.monotonic()
        try:
            wait_udp_bound(self.port, self._run.proc, start_timeout)
        except Exception:
            self._run.finish()
            raise
        self.ready_after_s = time.monotonic() - self.started_at
        self.result: SippResult | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def uri(self, user: str = "callee") -> str:
        return f"sip:{user}@{HOST}:{self.port}"

    def wait(self, timeout: float) -> SippResult:
        """Wait for sipp to finish its -m calls (killed after ``timeout``)."""
        if self.result is None:
            self.result = self._run.wait(timeout)
        return self.result

    def stop(self) -> SippResult:
        if self.result is None:
            self._run.timed_out = self._run.proc.poll() is None
            self.result = self._run.finish()
        return self.result

    def __enter__(self) -> SippUas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------- RTP


@dataclass(frozen=True)
class RtpPacket:
    t: float  # monotonic arrival (RtpSink) or capture time (pcap)
    pt: int
    marker: bool
    seq: int
    ts: int
    ssrc: int
    payload: bytes
    src: tuple[str, int] = ("", 0)


def parse_rtp(data: bytes, t: float = 0.0, src: tuple[str, int] = ("", 0)) -> RtpPacket | None:
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    cc = data[0] & 0x0F
    offset = 12 + 4 * cc
    if data[0] & 0x10 and len(data) >= offset + 4:
        offset += 4 + 4 * struct.unpack(">H", data[offset + 2 : offset + 4])[0]
    seq, ts, ssrc = struct.unpack(">HII", data[2:12])
    return RtpPacket(t, data[1] & 0x7F, bool(data[1] & 0x80), seq, ts, ssrc, data[offset:], src)


def rfc2833_digits(packets: Sequence[RtpPacket], pt: int = 101) -> str:
    """Digits from RFC 2833 telephone-events: one digit per (ssrc, timestamp) event."""
    seen: dict[tuple[int, int], str] = {}
    for p in packets:
        if p.pt == pt and len(p.payload) >= 4 and (p.ssrc, p.ts) not in seen:
            seen[(p.ssrc, p.ts)] = RTP_EVENT_DIGITS[p.payload[0]] if p.payload[0] < 16 else "?"
    return "".join(seen.values())


def read_pcap_rtp(path: Path) -> list[RtpPacket]:
    """RTP packets of a classic libpcap file (Ethernet or Linux-cooked, IPv4/UDP), no dependencies."""
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {1: 14, 113: 16, 101: 0}.get(linktype, 14)
    out: list[RtpPacket] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ip = frame[link_len:]
        if not ip or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        pkt = parse_rtp(udp[8:], sec + usec / 1e6)
        if pkt is not None:
            out.append(pkt)
    return out


class RtpSink:
    """Loopback UDP socket that records every RTP packet it gets (a callee's media port for tests).

    Put its ``port`` in an SDP (``SippUas(sdp_port=sink.port, rtp_echo=False)``). Optionally echoes."""

    def __init__(self, echo: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.echo = echo
        self.packets: list[RtpPacket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rtp-sink-{self.port}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            pkt = parse_rtp(data, time.monotonic(), addr)
            if pkt is not None:
                self.packets.append(pkt)
            if self.echo:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, addr)

    def digits(self, pt: int = 101) -> str:
        return rfc2833_digits(self.packets, pt)

    def count(self, pt: int) -> int:
        return sum(1 for p in self.packets if p.pt == pt)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> RtpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class QuestionAudio:
    wav: Path  # 8 kHz mono s16 WAV (what baresip's aufile needs), trailing silence included
    ulaw: Path  # raw 8 kHz mu-law, no header (what sipp's rtp_stream needs), speech only
    speech_s: float
    total_s: float


def make_question_audio(
    text: str, out_dir: Path, *, trailing_silence_s: float = 0.0, name: str = "q"
) -> QuestionAudio:
    """Speak ``text`` with espeak-ng; convert with sox to an 8 kHz WAV (+ silence) and raw mu-law."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}.espeak.wav"
    wav = out_dir / f"{name}.8k.wav"
    ulaw = out_dir / f"{name}.ulaw"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, timeout=30, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw", str(ulaw)],
        check=True, timeout=30, capture_output=True,
    )  # fmt: skip
    pad = ["pad", "0", f"{trailing_silence_s:.3f}"] if trailing_silence_s > 0 else []
    subprocess.run(
        ["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(wav), *pad],
        check=True, timeout=30, capture_output=True,
    )  # fmt: skip
    speech_s = ulaw.stat().st_size / 8000
    return QuestionAudio(wav, ulaw, speech_s, speech_s + trailing_silence_s)


def wav_seconds(path: Path) -> float:
    """Duration of a PCM WAV by its header (data chunk size / byte rate)."""
    data = path.read_bytes()
    byte_rate = struct.unpack("<I", data[28:32])[0]
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"data":
            size = min(size, len(data) - pos - 8)
            return size / byte_rate if byte_rate else 0.0
        pos += 8 + size
    return 0.0


# ------------------------------------------------------------------------------------------- baresip


@dataclass(frozen=True)
class BaresipEvent:
    t: float  # harness monotonic clock when the event was read from ctrl_tcp
    type: str  # CALL_RINGING, CALL_ESTABLISHED, CALL_RTPESTAB, AUDIO_ERROR, CALL_CLOSED, ...
    param: str
    data: dict[str, Any]


BARESIP_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t{host}:{sip_port}
net_interface\t\t{host}
dns_server\t\t{host}:53
call_local_timeout\t{local_timeout}
call_max_calls\t\t4
audio_player\t\taubridge,{name}
audio_alert\t\taubridge,{name}
audio_source\t\taufile,{source}
ausrc_srate\t\t8000
auplay_srate\t\t8000
ausrc_channels\t\t1
auplay_channels\t\t1
audio_buffer\t\t20-160
rtp_ports\t\t{rtp_lo}-{rtp_hi}
rtp_timeout\t\t{rtp_timeout}
jitter_buffer_delay\t1-5
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\taufile.so
module\t\t\taubridge.so
module\t\t\tsndfile.so
module\t\t\tctrl_tcp.so
module_app\t\taccount.so
module_app\t\tmenu.so
snd_path\t\t{rec_dir}
ctrl_tcp_listen\t\t{host}:{ctrl_port}
"""


class BaresipPeer:
    """One baresip process with a private config dir: caller (``call``) and auto-answer callee.

    Audio source: ``source_wav`` (8 kHz mono s16; ``make_question_audio`` makes one). baresip hangs up
    by itself when the source reaches its end (AUDIO_ERROR "end of file", then CALL_CLOSED), so pad it
    with enough silence to hear the answer. What it hears is recorded by sndfile in
    ``rec_dir/dump-<timestamp>-dec.wav`` (only received audio: no RTP, no samples). Events from
    ctrl_tcp are kept in ``events`` with harness monotonic timestamps."""

    def __init__(
        self,
        source_wav: Path,
        *,
        run_dir: Path,
        name: str = "baresip",
        user: str = "peer",
        codecs: str = "pcmu,pcma",
        rtp_timeout_s: int = 10,
        start_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.dir = run_dir / name
        self.rec_dir = self.dir / "rec"
        self.rec_dir.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_udp_port()
        self.ctrl_port = free_tcp_port()
        rtp_lo = free_udp_port_range(10)
        self.user = user
        (self.dir / "config").write_text(
            BARESIP_CONFIG.format(
                host=HOST, sip_port=self.sip_port, local_timeout=30, name=name, source=source_wav,
                rtp_lo=rtp_lo, rtp_hi=rtp_lo + 9, rtp_timeout=rtp_timeout_s, rec_dir=self.rec_dir,
                ctrl_port=self.ctrl_port,
            )
        )  # fmt: skip
        (self.dir / "accounts").write_text(
            f"<sip:{user}@{HOST}>;regint=0;answermode=auto;audio_codecs={codecs}\n"
        )
        (self.dir / "contacts").write_text("")
        self.log_path = self.dir / "baresip.log"
        self.events: list[BaresipEvent] = []
        self.responses: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._token = 0
        self.started_at = time.monotonic()
        self.proc = spawn([BARESIP_BIN, "-f", str(self.dir)], cwd=self.dir, log_path=self.log_path)
        try:
            self._sock = self._connect(start_timeout)
            wait_udp_bound(self.sip_port, self.proc, start_timeout)
        except Exception:
            self.stop()
            raise
        self.ready_after_s = time.monotonic() - self.started_at
        self._reader = threading.Thread(target=self._read_loop, name=f"baresip-{name}", daemon=True)
        self._reader.start()

    @property
    def uri(self) -> str:
        return f"sip:{self.user}@{HOST}:{self.sip_port}"

    def _connect(self, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baresip exited ({self.proc.returncode}):\n{tail(self.log_path)}")
            try:
                return socket.create_connection((HOST, self.ctrl_port), timeout=0.5)
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"baresip ctrl_tcp not up:\n{tail(self.log_path)}") from None
                time.sleep(0.02)

    def _read_loop(self) -> None:
        buf = b""
        self._sock.settimeout(0.2)
        while True:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while True:  # netstrings: <len>:<json>,
                head, sep, rest = buf.partition(b":")
                if not sep or not head.isdigit() or len(rest) < int(head) + 1:
                    break
                n = int(head)
                msg = json.loads(rest[:n])
                buf = rest[n + 1 :]
                now = time.monotonic()
                with self._cond:
                    if msg.get("event"):
                        self.events.append(
                            BaresipEvent(now, str(msg.get("type")), str(msg.get("param", "")), msg)
                        )
                    else:
                        self.responses.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Send a ctrl_tcp command (menu commands: dial, hangup, ...) and wait for its response."""
        self._token += 1
        token = str(self._token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(str(len(body)).encode() + b":" + body + b",")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for resp in self.responses:
                    if resp.get("token") == token:
                        return resp
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"baresip: no response to {command}")
                self._cond.wait(left)

    def call(self, uri: str) -> float:
        """Dial ``uri``; returns the monotonic time the dial command was sent."""
        t = time.monotonic()
        resp = self.command("dial", uri)
        if not resp.get("ok"):
            raise RuntimeError(f"baresip dial failed: {resp}")
        return t

    def hangup(self) -> None:
        self.command("hangup")

    def wait_event(self, type_: str, timeout: float, after: float = 0.0) -> BaresipEvent:
        """First event of ``type_`` read at or after monotonic time ``after``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev.type == type_ and ev.t >= after:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.type for e in self.events]
                    raise TimeoutError(f"baresip {self.name}: no {type_} in {timeout} s (saw {seen})")
                self._cond.wait(left)

    def event_types(self) -> list[str]:
        return [e.type for e in self.events]

    def recordings(self, kind: str = "dec") -> list[Path]:
        """sndfile dumps: "dec" = audio received (what the peer heard), "enc" = audio sent."""
        return sorted(self.rec_dir.glob(f"dump-*-{kind}.wav"))

    def stop(self) -> int:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None and hasattr(self, "_sock"):
                self.command("quit", timeout=1.0)
                self.proc.wait(2)
        if hasattr(self, "_sock"):
            self._sock.close()
        return kill_group(self.proc)

    def __enter__(self) -> BaresipPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------- linphonec

LINPHONE_RC = """\
[sip]
sip_port={sip_port}
sip_tcp_port=0
sip_tls_port=0
use_ipv6=0
ipv6_migration_done=1
bind_address={host}
contact=sip:{user}@{host}
guess_hostname=0
default_proxy=-1
register_only_when_network_is_up=0
[rtp]
audio_rtp_port={rtp_lo}-{rtp_hi}
video_rtp_port={vid_lo}-{vid_hi}
[net]
firewall_policy=0
[video]
capture=0
display=0
automatically_initiate=0
automatically_accept=0
"""


@dataclass
class LinphoneResult:
    returncode: int
    timed_out: bool
    connected: bool  # "Call N with ... connected."
    media: bool  # "Media streams established"
    ended: bool  # "Call N with ... ended"
    connect_s: float | None  # seconds from the `call` command to "connected"
    ready_after_s: float  # process start -> SIP port bound
    stdout_path: Path
    log_path: Path
    rc_path: Path

    @property
    def ok(self) -> bool:
        return self.connected and self.ended and not self.timed_out


def run_linphone_call(
    uri: str,
    *,
    run_dir: Path,
    talk_s: float = 3.0,
    play_wav: Path | None = None,
    timeout: float = 30.0,
    user: str = "linphone",
) -> LinphoneResult:
    """linphonec calls ``uri`` with its default codec list (opus, speex, PCMU, PCMA, G729, 3x
    telephone-event...), stays ``talk_s`` s after "connected", terminates and quits.

    linphonec reads commands through readline, so stdin is a pty; HOME is ``run_dir/linphone`` (it
    needs ``~/.local/share/linphone`` to exist, or it never opens its SIP port); ``soundcard use files``
    replaces the (absent) sound card, ``play_wav`` is then sent as the microphone."""
    home = run_dir / "linphone"
    (home / ".local/share/linphone").mkdir(parents=True, exist_ok=True)
    sip_port = free_udp_port()
    rtp_lo = free_udp_port_range(24)
    rc_path = home / "linphonerc"
    rc_path.write_text(
        LINPHONE_RC.format(
            sip_port=sip_port, host=HOST, user=user, rtp_lo=rtp_lo, rtp_hi=rtp_lo + 9, vid_lo=rtp_lo + 12,
            vid_hi=rtp_lo + 21,
        )
    )  # fmt: skip
    stdout_path = home / "linphonec.stdout.log"
    log_path = home / "linphonec.log"
    master, slave = pty.openpty()
    env = {**os.environ, "HOME": str(home)}
    t0 = time.monotonic()
    deadline = t0 + timeout
    proc = spawn(
        [LINPHONEC_BIN, "-c", str(rc_path), "-d", "5", "-l", str(log_path)],
        cwd=home, log_path=stdout_path, stdin=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    connected = media = ended = timed_out = False
    connect_s: float | None = None
    ready_after_s = -1.0

    def send(line: str) -> None:
        os.write(master, (line + "\n").encode())

    def drain() -> None:  # keep the pty from filling up (echo goes to stdout, but be safe)
        while select.select([master], [], [], 0)[0]:
            try:
                if not os.read(master, 4096):
                    return
            except OSError:
                return

    def wait_for(pattern: str, until: float) -> bool:
        while time.monotonic() < until:
            drain()
            if re.search(pattern, _read(stdout_path)):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    try:
        wait_udp_bound(sip_port, proc, max(1.0, deadline - time.monotonic()))
        ready_after_s = time.monotonic() - t0
        send("soundcard use files")
        t_call = time.monotonic()
        send(f"call {uri}")
        connected = wait_for(r"Call \d+ with .* connected", deadline)
        if connected:
            connect_s = time.monotonic() - t_call
            if play_wav is not None:
                send(f"play {play_wav}")
            media = wait_for(r"Media streams established", min(deadline, time.monotonic() + 2))
            time.sleep(max(0.0, min(talk_s, deadline - time.monotonic() - 3)))
            send("terminate")
        ended = wait_for(r"Call \d+ with .* (ended|error)", deadline) or not connected
        ended = ended and bool(re.search(r"Call \d+ with .* ended", _read(stdout_path)))
        send("quit")
        try:
            proc.wait(max(0.5, min(5.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            timed_out = True
    except (TimeoutError, RuntimeError):
        timed_out = True
    finally:
        rc = kill_group(proc)
        os.close(master)
    return LinphoneResult(
        returncode=rc, timed_out=timed_out, connected=connected, media=media, ended=ended,
        connect_s=connect_s, ready_after_s=ready_after_s, stdout_path=stdout_path, log_path=log_path,
        rc_path=rc_path,
    )  # fmt: skip


@contextlib.contextmanager
def sipp_uas(**kw: Any) -> Iterator[SippUas]:
    """``with sipp_uas(run_dir=tmp_path) as uas: ...`` (same arguments as ``SippUas``)."""
    uas = SippUas(**kw)
    try:
        yield uas
    finally:
        uas.stop()
