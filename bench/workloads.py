"""The workloads: what load is put on a server, and what is measured while it runs.

Each workload turns one running server into one ``Measurement``. The echo workloads use
the C load generator (bench/loadgen.c); HTTP uses ``wrk``. Server cost is measured
between the load generator's marks, over the server's whole session (see procstat.py),
so CPU per request includes forked children and every thread.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .loadgen import LoadgenArgs, run_loadgen
from .procstat import TreeSample, busy_core_seconds
from .servers import ServerError, ServerProcess, pin_and_raise_limits

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Knobs shared by every workload; ``QUICK`` shrinks them for the test suite."""

    warmup_s: float = 0.5
    duration_s: float = 2.0
    conns: int = 16  # ping-pong and churn: connections (or churn slots) at once
    size: int = 64  # bytes per ping-pong / churn message
    bulk_conns: int = 1
    idle_conns: int = 10_000
    idle_active: int = 4  # ping-pong connections alongside the idle ones
    connect_timeout_s: float = 10.0  # how long the idle connections may take to open
    http_conns: int = 16
    host: str = "127.0.0.1"
    server_cores: tuple[int, ...] | None = (0,)
    loadgen_cores: tuple[int, ...] | None = (1,)


QUICK = Settings(warmup_s=0.2, duration_s=0.5, conns=4, idle_conns=100, connect_timeout_s=1.5)


@dataclass
class Measurement:
    """One run of one workload on one server."""

    rate: float  # in the workload's unit per second
    units: float  # requests, connections or MB completed in the window
    seconds: float
    server_cpu_s: float
    cpu_us_per_unit: float | None
    server_cpu_share: float  # server CPU-seconds per second: 1.0 is its core saturated
    loadgen_cpu_share: float | None
    other_cpu_share: float | None  # the pinned cores' busy time beyond server + load generator
    rss_mib: float
    threads: int
    processes: int
    errors: int = 0
    stalled_conns: int = 0
    latency_us: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    """A named load: its protocol ("echo" or "http"), its units, and how to run it."""

    name: str
    protocol: str
    unit: str  # the rate's unit, e.g. "req/s"
    cpu_unit: str  # what server CPU is divided by, e.g. "request"
    describe: Callable[[Settings], str]
    run: Callable[[ServerProcess, Settings], Measurement]
    needs: Callable[[], str | None] = lambda: None  # why it cannot run here, or None


def _measure(
    server: ServerProcess, args: LoadgenArgs, settings: Settings, *, per_mb: bool = False
) -> Measurement:
    samples: dict[str, TreeSample] = {}
    busy: dict[str, float] = {}
    cores = _pinned_cores(settings)

    def on_mark(mark: str) -> None:
        samples[mark] = server.sample()
        busy[mark] = busy_core_seconds(cores)

    result = run_loadgen(
        args, server.host, server.port, cores=settings.loadgen_cores, on_mark=on_mark
    )
    if not server.is_alive():
        raise ServerError(f"{server.spec.name} died under load: {server.stderr_tail()}")
    start, end = samples["start"], samples["end"]
    seconds = float(result["seconds"])
    units = result["bytes"] / 1e6 if per_mb else float(result["requests"])
    cpu_s = end.cpu_s - start.cpu_s
    other_s = busy["end"] - busy["start"] - cpu_s - result["loadgen_cpu_s"]
    return Measurement(
        rate=units / seconds,
        units=units,
        seconds=seconds,
        server_cpu_s=cpu_s,
        cpu_us_per_unit=cpu_s * 1e6 / units if units else None,
        server_cpu_share=cpu_s / seconds,
        loadgen_cpu_share=result["loadgen_cpu_s"] / seconds,
        other_cpu_share=max(0.0, other_s / seconds),
        rss_mib=end.rss_bytes / MIB,
        threads=end.threads,
        processes=end.processes,
        errors=int(result["errors"]),
        stalled_conns=int(result["stalled_conns"]),
        latency_us=result["latency_us"],
        extra={
            "connect_s": result["connect_s"],
            **{
                key: result[key]
                for key in ("idle_requested", "idle_open", "idle_dropped", "idle_connect_s")
                if args.idle
            },
        },
    )


def _pinned_cores(settings: Settings) -> set[int] | None:
    if settings.server_cores is None or settings.loadgen_cores is None:
        return None
    return {*settings.server_cores, *settings.loadgen_cores}


def _loadgen(mode: str, settings: Settings, **overrides: Any) -> LoadgenArgs:
    args = LoadgenArgs(
        mode=mode,
        conns=settings.conns,
        size=settings.size,
        warmup_s=settings.warmup_s,
        duration_s=settings.duration_s,
        connect_timeout_s=settings.connect_timeout_s,
    )
    return replace(args, **overrides)


def run_pingpong(server: ServerProcess, settings: Settings) -> Measurement:
    return _measure(server, _loadgen("pingpong", settings), settings)


def run_churn(server: ServerProcess, settings: Settings) -> Measurement:
    return _measure(server, _loadgen("churn", settings), settings)


def run_bulk(server: ServerProcess, settings: Settings) -> Measurement:
    args = _loadgen("bulk", settings, conns=settings.bulk_conns)
    return _measure(server, args, settings, per_mb=True)


def run_idle(server: ServerProcess, settings: Settings) -> Measurement:
    args = _loadgen("pingpong", settings, conns=settings.idle_active, idle=settings.idle_conns)
    return _measure(server, args, settings)


# -- HTTP, through wrk -----------------------------------------------------------------

_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b")
_WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_TO_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_missing() -> str | None:
    if shutil.which("wrk") is None:
        return "wrk is not installed (Debian: apt-get install wrk)"
    return None


def _wrk_argv(url: str, seconds: int, conns: int) -> list[str]:
    # wrk takes whole seconds; one thread is plenty for one Python server on loopback.
    return ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "--latency", url]


def _wrk(url: str, seconds: int, conns: int, cores: Sequence[int] | None) -> str:
    done = subprocess.run(
        _wrk_argv(url, seconds, conns),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
        preexec_fn=pin_and_raise_limits(cores),
    )
    if done.returncode != 0:
        raise ServerError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def run_http(server: ServerProcess, settings: Settings) -> Measurement:
    url = f"http://{server.host}:{server.port}/"
    if settings.warmup_s > 0:
        _wrk(url, 1, settings.http_conns, settings.loadgen_cores)
    seconds = max(1, round(settings.duration_s))
    cores = _pinned_cores(settings)
    before, busy_before = server.sample(), busy_core_seconds(cores)
    # wrk is the only child this process reaps in the window: its CPU is the children's delta.
    children_before = _children_cpu_s()
    # Start wrk and sample memory halfway through, under load.
    process = subprocess.Popen(
        _wrk_argv(url, seconds, settings.http_conns),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pin_and_raise_limits(settings.loadgen_cores),
    )
    try:
        time.sleep(seconds / 2)
        middle = server.sample()
        output, errors_text = process.communicate(timeout=seconds + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    after, busy_after = server.sample(), busy_core_seconds(cores)
    wrk_cpu_s = _children_cpu_s() - children_before
    if process.returncode != 0:
        raise ServerError(f"wrk failed: {errors_text.strip() or output.strip()}")
    if not server.is_alive():
        raise ServerError(f"{server.spec.name} died under load: {server.stderr_tail()}")
    total = _WRK_TOTAL.search(output)
    if total is None:
        raise ServerError(f"could not read wrk's output:\n{output}")
    requests = float(total.group(1))
    elapsed = float(total.group(2)) * _TO_SECONDS[total.group(3)]
    latency: dict[str, float | None] = {
        f"p{p}": float(value) * _TO_SECONDS[unit] * 1e6
        for p, value, unit in _WRK_PERCENTILE.findall(output)
    }
    socket_errors = _WRK_SOCKET_ERRORS.search(output)
    non_2xx = _WRK_NON_2XX.search(output)
    errors = sum(map(int, socket_errors.groups())) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    cpu_s = after.cpu_s - before.cpu_s
    return Measurement(
        rate=requests / elapsed,
        units=requests,
        seconds=elapsed,
        server_cpu_s=cpu_s,
        cpu_us_per_unit=cpu_s * 1e6 / requests if requests else None,
        server_cpu_share=cpu_s / elapsed,
        loadgen_cpu_share=wrk_cpu_s / elapsed,
        other_cpu_share=max(0.0, (busy_after - busy_before - cpu_s - wrk_cpu_s) / elapsed),
        rss_mib=middle.rss_bytes / MIB,
        threads=middle.threads,
        processes=middle.processes,
        errors=errors,
        latency_us=latency,
    )


WORKLOADS: dict[str, Workload] = {
    "pingpong": Workload(
        "pingpong",
        "echo",
        "req/s",
        "request",
        lambda s: (
            f"{s.conns} persistent connections, {s.size}-byte messages, each waits for its echo"
        ),
        run_pingpong,
    ),
    "churn": Workload(
        "churn",
        "echo",
        "conn/s",
        "connection",
        lambda s: (
            f"{s.conns} clients in a loop: connect, send {s.size} bytes, read them back, close"
        ),
        run_churn,
    ),
    "bulk": Workload(
        "bulk",
        "echo",
        "MB/s",
        "MB",
        lambda s: f"{s.bulk_conns} connection streaming 64 KiB writes, counting the echo",
        run_bulk,
    ),
    "idle": Workload(
        "idle",
        "echo",
        "req/s",
        "request",
        lambda s: (
            f"{s.idle_conns:,} idle connections opened first, then {s.idle_active} "
            f"ping-pong connections ({s.size} bytes)"
        ),
        run_idle,
    ),
    "http": Workload(
        "http",
        "http",
        "req/s",
        "request",
        lambda s: (
            f"wrk, 1 thread, {s.http_conns} keep-alive connections, GET / "
            "answered by a small http.server handler"
        ),
        run_http,
        needs=wrk_missing,
    ),
}
