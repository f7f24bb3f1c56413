"""Storage fixtures: every records test runs on SQLite and on a real, throwaway PostgreSQL.

`postgres` (session scope) makes a PostgreSQL cluster of its own: `initdb` into a temporary
directory, `pg_ctl start` on 127.0.0.1 with a free port and its unix socket in that directory,
trust authentication, no fsync (nothing here has to survive a crash). It stops the server and
deletes the directory at the end. The server binaries come from the Debian `postgresql` package
(`make system` installs it; CI does too), found in /usr/lib/postgresql/*/bin or on PATH. Missing
binaries fail the tests with a message saying so: they are never skipped.

initdb refuses to run as root, so under root the cluster runs as the `postgres` system user (which
the package creates), through `runuser`.

`db_url` is parametrized over both backends: a new SQLite file, or a new, empty PostgreSQL
database per test.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from voicebot.storage.records import Records

PG_USER = "postgres"
INITDB_TIMEOUT_S = 120
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
SQL_TIMEOUT_S = 30


def find_pg_bin() -> Path:
    """The directory holding initdb and pg_ctl: newest /usr/lib/postgresql/N/bin, else PATH."""

    def version(path: Path) -> tuple[int, ...]:
        digits = path.parent.name.split(".")
        return tuple(int(d) for d in digits if d.isdigit())

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH: "
        "install the `postgresql` package (`make system`, or `apt-get install postgresql`). The storage "
        "tests run every records test on PostgreSQL too and are not skipped without it.",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path
    port: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_USER, "--", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        # cwd: postgres cannot read root's working directory, and its tools chdir back to it.
        return subprocess.run(
            command, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\nserver log:\n{log}"
            )

    def init(self) -> None:
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_USER)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        result = self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            PG_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            timeout=INITDB_TIMEOUT_S,
        )
        self._check(result, "initdb")

    def start(self) -> None:
        # A free port can be taken between the probe and the bind: try a few.
        for _attempt in range(3):
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=100 -c shared_buffers=32MB"
            )
            result = self._run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--options",
                options,
                "--wait",
                "--timeout",
                str(START_TIMEOUT_S),
                timeout=START_TIMEOUT_S + 15,
            )
            if result.returncode == 0:
                return
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            if "could not bind" not in log and "Address already in use" not in log:
                self._check(result, "pg_ctl start")
        self._check(result, "pg_ctl start")

    def stop(self) -> None:
        for mode in ("fast", "immediate"):
            try:
                result = self._run(
                    "pg_ctl",
                    "stop",
                    "--pgdata",
                    str(self.data_dir),
                    "--mode",
                    mode,
                    "--wait",
                    "--timeout",
                    str(STOP_TIMEOUT_S),
                    timeout=STOP_TIMEOUT_S + 15,
                )
            except subprocess.TimeoutExpired:
                continue
            if result.returncode == 0 or "Is server running?" in result.stderr:
                return

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres connect_timeout=10",
            autocommit=True,
        ) as conn:
            conn.execute(f"SET statement_timeout = {SQL_TIMEOUT_S * 1000}")
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    bin_dir = find_pg_bin()
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="voicebot-pg-"))
    cluster = PostgresCluster(bin_dir, root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


_database_numbers = itertools.count(1)


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> str:
    """A new, empty PostgreSQL database."""
    return postgres.create_database(f"vb_test_{next(_database_numbers)}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'voicebot.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend in turn."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def records(db_url: str) -> Iterator[Records]:
    recs = Records(db_url)
    yield recs
    recs.close()
