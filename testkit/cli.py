"""The voicebot command line (`python run.py ...`) as tests run it: against a data dir, output captured."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from testkit.server import REPO_ROOT, server_env

CLI_TIMEOUT_S = 60.0

#: What the `run_cli` fixture hands a test: `run_cli("calls", "list").stdout`.
CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def run_cli_in(
    data_dir: Path,
    *args: str,
    timeout: float = CLI_TIMEOUT_S,
    check: bool = True,
    port: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGS...` against a data dir (and a server's HTTP port); output captured as text.

    With `check`, a non-zero exit raises AssertionError showing both outputs."""
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
