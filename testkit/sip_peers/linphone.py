"""linphonec as a SIP caller: one call with its default (many-codec) offer, through a pty."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testkit.net import free_udp_port, free_udp_port_range, wait_udp_bound
from testkit.procs import kill_group, read_text, spawn
from testkit.sip_peers.common import HOST, LINPHONEC_BIN

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
            if re.search(pattern, read_text(stdout_path)):
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
        ended = ended and bool(re.search(r"Call \d+ with .* ended", read_text(stdout_path)))
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
