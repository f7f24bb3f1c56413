"""sipp as a SIP peer: one-call callers (built-in ``uac`` or a scenario of ``scenarios/``), a
background callee (``SippUas``), and the result of a run (exit code, stats counters, traces).

The harness adds the control socket, trace and stats options to every run; cwd is the run dir (with a
``pcap`` symlink to /usr/share/sip-tester). README.md has the command lines and sipp's quirks.
"""

from __future__ import annotations

import contextlib
import csv
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.net import free_udp_port, free_udp_port_range, wait_udp_bound
from testkit.procs import kill_group, read_text, spawn, tail
from testkit.sip_peers.common import HOST, PCAP_DIR, SCENARIO_DIR, SIPP_BIN


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
        return read_text(self.messages_path)

    def errors(self) -> str:
        return read_text(self.errors_path)

    def log_lines(self) -> list[str]:
        """Lines written by <log> actions (needs -trace_logs, which the harness always passes)."""
        return [ln for ln in read_text(self.logs_path).splitlines() if ln.strip()]

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


def _parse_stats(path: Path) -> dict[str, str]:
    try:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return {k: v for k, v in zip(rows[0], rows[-1], strict=False) if k}


def _scenario_args(scenario: str) -> list[str]:
    """``uac``/``uas`` (built-in) -> -sn; ``foo.xml`` -> scenarios/foo.xml; a path -> as is."""
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


@contextlib.contextmanager
def sipp_uas(**kw: Any) -> Iterator[SippUas]:
    """``with sipp_uas(run_dir=tmp_path) as uas: ...`` (same arguments as ``SippUas``)."""
    uas = SippUas(**kw)
    try:
        yield uas
    finally:
        uas.stop()
