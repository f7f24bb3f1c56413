"""Loopback networking for tests and benchmarks: free ports, UDP bind checks, a proxy-free HTTP GET.

Ports are picked by binding to port 0 and releasing the socket, so they are free right now; nothing
is fixed, and parallel test processes (pytest-xdist workers) do not collide on them.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

#: Every peer, server and client of the tests lives on loopback.
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port free right now on ``host`` (bind-to-0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port(host: str = HOST) -> int:
    """A UDP port free right now on ``host`` (SIP and RTP peers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
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
    """Until something binds UDP ``port``; raises if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if udp_port_bound(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before binding UDP {port}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing bound UDP port {port} within {timeout} s")


def http_get_json(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """``GET url`` without any proxy (whatever the environment says): (status, JSON body).

    A body that is not JSON comes back as ``{"raw": <its first 200 characters>}``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body or b"{}")
    except ValueError:
        return status, {"raw": body[:200].decode(errors="replace")}
