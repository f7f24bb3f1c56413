"""Child processes of tests and benchmarks: started in their own process group, always bounded.

``stop_process`` ends one process (the voicebot server), ``kill_group`` a process and whatever it
started (sipp, baresip, linphonec); both SIGTERM first and SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: How long a server gets to shut down cleanly after SIGTERM.
STOP_GRACE_S = 10.0
#: How long a SIP peer gets (they have nothing to flush).
PEER_GRACE_S = 3.0
LOG_TAIL_LINES = 80


def stop_process(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM, then SIGKILL after ``grace_s``. Returns the exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=grace_s)
    return process.returncode


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_path: Path,
    stdin: int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, stdout+stderr appended to ``log_path``."""
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


def kill_group(proc: subprocess.Popen[bytes], grace: float = PEER_GRACE_S) -> int:
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
    """The last ``lines`` lines of a log file (or why there are none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


def read_text(path: Path) -> str:
    """A log or trace file's text; "" when it does not exist (yet)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
