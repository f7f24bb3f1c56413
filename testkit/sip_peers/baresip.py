"""baresip as a SIP peer: caller or auto-answering callee, driven over ctrl_tcp, recording what it hears."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.net import free_port, free_udp_port, free_udp_port_range, wait_udp_bound
from testkit.procs import kill_group, spawn, tail
from testkit.sip_peers.common import BARESIP_BIN, HOST


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
        self.ctrl_port = free_port()
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
