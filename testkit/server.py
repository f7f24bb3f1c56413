"""The real voicebot server as a subprocess: `python run.py serve` on free loopback ports.

`start_server` launches it with its own data directory and waits until `GET /health` answers 200;
`serve_for_tests` wraps that for pytest fixtures (start, yield, stop, print the log if it failed).
Every server started here is remembered, so the test session can check at its end that no server
logged a traceback the tests did not provoke on purpose (`expect_tracebacks`, `unexpected_tracebacks`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testkit.net import free_port, free_udp_port, http_get_json
from testkit.procs import LOG_TAIL_LINES, stop_process

if TYPE_CHECKING:
    import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
HEALTH_TIMEOUT_S = 120.0

#: How the server prints the API key it creates on its first start.
API_KEY_LINE = re.compile(r"API key \(shown once\): (vb_[A-Za-z0-9_-]+)")

#: Where the test server's handoffs are REFERred to; no one needs to listen there.
TRANSFER_URI = "sip:agents@127.0.0.1:5999"

TRACEBACK = "Traceback (most recent call last)"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def server_env(data_dir: Path, port: int | None = None) -> dict[str, str]:
    """The environment of a server (or CLI) on `data_dir`: offline models, loopback, no proxy."""
    env = dict(os.environ)
    env.update(
        VOICEBOT_DATA_DIR=str(data_dir),
        VOICEBOT_HTTP_HOST="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    if port is not None:
        env["VOICEBOT_HTTP_PORT"] = str(port)
    # Loopback only: never route test traffic through a proxy.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@dataclass
class ServerProcess:
    """A running `python run.py serve`."""

    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    ready_after_s: float = 0.0
    sip_port: int = 0
    _log_file: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/stream"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{(self.data_dir / 'voicebot.db').resolve()}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    @property
    def api_key(self) -> str:
        """The admin API key the server printed, once, on its first start (read from its log)."""
        found = API_KEY_LINE.search(self.log_text())
        if found is None:
            raise AssertionError(f"the server printed no API key\n{self.log_tail()}")
        return found.group(1)

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """`METHOD /api{path}` with the server's API key and a JSON body: (status, JSON answer)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.api_headers, **({"Content-Type": "application/json"} if data is not None else {})}
        request = urllib.request.Request(f"{self.url}/api{path}", data=data, method=method, headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=15) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, json.loads(raw or b"{}")

    def http_client(self, timeout: float = 60.0) -> Any:
        """An httpx client on the server, sending its API key, ignoring proxy settings."""
        import httpx

        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False, headers=self.api_headers)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        return http_get_json(f"{self.url}/health", timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        status = stop_process(self.process)
        if self._log_file is not None:
            self._log_file.close()
        return status


def start_server(
    data_dir: Path,
    log_path: Path,
    *,
    health_timeout_s: float = HEALTH_TIMEOUT_S,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start `python run.py serve` and wait until /health answers 200. Raises RuntimeError (with the
    log tail) when the server dies or does not become ready in time; the process is stopped then."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(data_dir, port)
    env["VOICEBOT_SIP_PORT"] = str(free_udp_port())
    env["VOICEBOT_SIP_TRANSFER_URI"] = TRANSFER_URI
    # Every test call comes from 127.0.0.1 and mostly one caller number: the rate-limit tests turn
    # the limits on for their own server.
    env["VOICEBOT_RATE_LIMIT_NUMBER_PER_MIN"] = "0"
    env["VOICEBOT_RATE_LIMIT_IP_PER_MIN"] = "0"
    # The test SIP peers (sipp, baresip, ...) listen on loopback; a real deployment names its trunks.
    env["VOICEBOT_DIAL_ALLOW"] = "127.0.0.1"
    env.update(extra_env or {})
    log_file = log_path.open("wb")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "run.py", "serve"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C on pytest does not hit the server before teardown
    )
    server = ServerProcess(
        port, data_dir, log_path, process, _log_file=log_file, sip_port=int(env["VOICEBOT_SIP_PORT"])
    )
    _SERVER_LOGS.setdefault(log_path, 0)
    deadline = started + health_timeout_s
    last = "no answer yet"
    while True:
        if process.poll() is not None:
            log_file.close()
            raise RuntimeError(
                f"the server exited with status {process.returncode} before it was ready.\n"
                f"--- {log_path} (tail) ---\n{log_tail(log_path)}"
            )
        try:
            status, body = server.health(timeout=2.0)
            last = f"{status} {body}"
            if status == 200:
                server.ready_after_s = time.monotonic() - started
                return server
            if body.get("status") == "failed":
                break
        except (OSError, urllib.error.URLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    stop_process(process)
    log_file.close()
    raise RuntimeError(
        f"the server was not ready after {time.monotonic() - started:.0f} s (last /health: {last}).\n"
        f"--- {log_path} (tail) ---\n{log_tail(log_path)}"
    )


def serve_for_tests(
    tmp_path_factory: pytest.TempPathFactory, name: str, extra_env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """For a fixture: start a real server in a fresh data dir, yield it, stop it (printing its log
    tail if it did not exit cleanly). A server that does not start fails the test that needs it."""
    import pytest

    base = tmp_path_factory.mktemp(name)
    try:
        proc = start_server(base / "data", base / "server.log", extra_env=extra_env)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield proc
    finally:
        status = proc.stop()
        if status not in (0, -signal.SIGTERM, None):
            print(f"\n{name} server exited with status {status}; log: {proc.log_path}\n{proc.log_tail(30)}")


# --------------------------------------------------------------------------- tracebacks in server logs

# Server logs started in this process, and how many tracebacks tests provoked in each on purpose.
_SERVER_LOGS: dict[Path, int] = {}


def expect_tracebacks(server: ServerProcess, count: int = 1) -> None:
    """Declare that a test provokes `count` tracebacks in this server's log on purpose (and asserts them)."""
    _SERVER_LOGS[server.log_path] = _SERVER_LOGS.get(server.log_path, 0) + count


def unexpected_tracebacks() -> dict[Path, int]:
    """Server logs (of servers started in this process) holding more tracebacks than their tests
    declared: {log: how many more}."""
    extra: dict[Path, int] = {}
    for log, expected in _SERVER_LOGS.items():
        found = log.read_text(errors="replace").count(TRACEBACK) if log.exists() else 0
        if found > expected:
            extra[log] = found - expected
    return extra


def first_traceback(log: Path, chars: int = 3000) -> str:
    """The first traceback in a server log, for the report."""
    text = log.read_text(errors="replace") if log.exists() else ""
    at = text.find(TRACEBACK)
    return text[at : at + chars] if at >= 0 else "(no traceback found any more)"
