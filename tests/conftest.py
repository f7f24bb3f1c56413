"""Shared fixtures: the real voicebot server as a subprocess, and its command line.

`server` (session scope) starts `python run.py serve` on a free loopback port with its own data
directory, waits for `GET /health` to answer 200, and stops it at the end (SIGTERM, then SIGKILL
after 10 s). The server's stdout and stderr go to a log file; when a test that used the server
fails, the tail of that log is attached to the failure report.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
HEALTH_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
CLI_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 80

# tests/ is not a package; make its helper modules importable however pytest was started.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port free right now on loopback (SIP and RTP peers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: How the server prints the API key it creates on its first start.
API_KEY_LINE = re.compile(r"API key \(shown once\): (vb_[A-Za-z0-9_-]+)")

#: Where the test server's handoffs are REFERred to; no one needs to listen there.
TRANSFER_URI = "sip:agents@127.0.0.1:5999"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def server_env(data_dir: Path, port: int | None = None) -> dict[str, str]:
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
        return stop_process(self.process)


def http_get_json(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    handler = urllib.request.ProxyHandler({})  # loopback: no proxy, whatever the environment says
    opener = urllib.request.build_opener(handler)
    try:
        with opener.open(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body or b"{}")
    except ValueError:
        return status, {"raw": body[:200].decode(errors="replace")}


def stop_process(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM, then SIGKILL after `grace_s`. Returns the exit status."""
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


TRACEBACK = "Traceback (most recent call last)"
# Server logs of this session, and how many tracebacks tests provoked in each on purpose.
_SERVER_LOGS: dict[Path, int] = {}


def expect_tracebacks(server: ServerProcess, count: int = 1) -> None:
    """Declare that a test provokes `count` tracebacks in this server's log on purpose (and asserts them)."""
    _SERVER_LOGS[server.log_path] = _SERVER_LOGS.get(server.log_path, 0) + count


def unexpected_tracebacks() -> dict[Path, int]:
    """Server logs holding more tracebacks than their tests declared: {log: how many more}."""
    extra: dict[Path, int] = {}
    for log, expected in _SERVER_LOGS.items():
        found = log.read_text(errors="replace").count(TRACEBACK) if log.exists() else 0
        if found > expected:
            extra[log] = found - expected
    return extra


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The whole suite must leave 0 tracebacks in its servers' logs, but those tests provoked."""
    extra = unexpected_tracebacks()
    if not extra:
        return
    for log, count in extra.items():
        text = log.read_text(errors="replace")
        at = text.index(TRACEBACK)
        print(f"\n{log}: {count} unexpected traceback(s); the first:\n{text[at : at + 3000]}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def serve_for_tests(
    tmp_path_factory: pytest.TempPathFactory, name: str, extra_env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Start a real server in a fresh data dir, yield it, stop it (printing its log if it failed)."""
    base = tmp_path_factory.mktemp(name)
    try:
        proc = start_server(base / "data", base / "server.log", extra_env=extra_env)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield proc
    finally:
        status = proc.stop()
        if proc._log_file is not None:
            proc._log_file.close()
        if status not in (0, -signal.SIGTERM, None):
            print(f"\n{name} server exited with status {status}; log: {proc.log_path}\n{proc.log_tail(30)}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server on a free loopback port, with a fresh data dir; shared by the session."""
    yield from serve_for_tests(tmp_path_factory, "voicebot-server")


@pytest.fixture(scope="session")
def capacity_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server admitting 16 calls, with no per-source INVITE rate (24 INVITEs come from one sipp)."""
    env = {"VOICEBOT_MAX_CALLS": "16", "VOICEBOT_SIP_INVITE_RATE": "0"}
    yield from serve_for_tests(tmp_path_factory, "capacity", env)


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def run_cli_in(
    data_dir: Path,
    *args: str,
    timeout: float = CLI_TIMEOUT_S,
    check: bool = True,
    port: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGS...` against a data dir (and a server's HTTP port); output captured as text."""
    result = subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO_ROOT,
        env=server_env(data_dir, port),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"`python run.py {' '.join(args)}` exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@pytest.fixture
def run_cli(server: ServerProcess) -> CliRunner:
    """Run `python run.py ...` with the server's data dir: `run_cli("calls", "list").stdout`."""

    def run(
        *args: str, timeout: float = CLI_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_cli_in(server.data_dir, *args, timeout=timeout, check=check)

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the server log's tail to a failed test that used the server."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or "server" not in getattr(item, "fixturenames", ()):
        return
    funcargs = getattr(item, "funcargs", {})
    proc = funcargs.get("server")
    if isinstance(proc, ServerProcess):
        alive = "running" if proc.alive() else f"exited ({proc.process.returncode})"
        report.sections.append((f"voicebot server log tail ({proc.log_path}, {alive})", proc.log_tail()))
