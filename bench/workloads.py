"""The workloads: what load is put on a server, and what is measured while it runs.

Each workload turns one running server into one ``Measurement``. The echo workloads use
the C load generator (bench/loadgen.c), pool_memory its own client (bench/holdclient.py);
HTTP uses ``wrk``. prefork_scaling also reads each process of a pre-fork server apart
(master, workers) for per-worker memory, and places server and load generator itself.
Server cost is measured between the load generator's marks, over the server's whole
session (see procstat.py), so CPU per request includes forked children and every thread.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .loadgen import ChildLines, LoadgenArgs, close_process, run_loadgen
from .procstat import ProcessSample, TreeSample, busy_core_seconds, session_processes
from .servers import (
    DOWNLOAD_BYTES,
    REPO_ROOT,
    SCALING_WORKERS,
    ServerError,
    ServerProcess,
    ServerSpec,
    find_sockserve_class,
    pin_and_raise_limits,
)

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
    pool_conns: int = 2000  # pool_memory: connections, all open at once
    pool_hold_s: float = 3.0  # pool_memory: how long they are held after the last connect
    pool_drain_timeout_s: float = 20.0  # pool_memory: how long the rest may take afterwards
    host: str = "127.0.0.1"
    server_cores: tuple[int, ...] | None = (0,)
    loadgen_cores: tuple[int, ...] | None = (1,)


QUICK = Settings(
    warmup_s=0.2,
    duration_s=0.5,
    conns=4,
    idle_conns=100,
    connect_timeout_s=1.5,
    pool_conns=300,
    pool_hold_s=0.3,
    pool_drain_timeout_s=5.0,
)


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

    @classmethod
    def of(
        cls,
        *,
        units: float,
        seconds: float,
        server_cpu_s: float,
        loadgen_cpu_s: float,
        busy_s: float,
        sample: TreeSample,
        **details: Any,
    ) -> Measurement:
        """A run from what was counted: rate, CPU per unit and CPU shares derived here.

        ``busy_s``: the pinned cores' busy time over the window; what neither the server
        nor the load generator used of it is the "other" share. ``sample``: the server
        tree's memory and thread counts to report.
        """
        other_s = busy_s - server_cpu_s - loadgen_cpu_s
        return cls(
            rate=units / seconds,
            units=units,
            seconds=seconds,
            server_cpu_s=server_cpu_s,
            cpu_us_per_unit=server_cpu_s * 1e6 / units if units else None,
            server_cpu_share=server_cpu_s / seconds,
            loadgen_cpu_share=loadgen_cpu_s / seconds,
            other_cpu_share=max(0.0, other_s / seconds),
            rss_mib=sample.rss_bytes / MIB,
            threads=sample.threads,
            processes=sample.processes,
            **details,
        )

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
    #: The servers (names or globs) it runs when none are chosen; empty: all of its protocol.
    servers: tuple[str, ...] = ()
    #: The same for ``--quick``; empty: ``servers`` (or the quick set if that is empty too).
    quick_servers: tuple[str, ...] = ()
    #: Where one server's run places server and load generator (default: ``settings``').
    layout: Callable[[ServerSpec, Settings], Settings] = lambda spec, settings: settings
    #: How the report renders it: "standard" (the per-server table) or a table of its own.
    table: str = "standard"
    #: Seconds one run takes beyond warm-up, duration and start-up (for the time estimate).
    extra_s: Callable[[Settings], float] = lambda settings: 0.0


def _measure(
    server: ServerProcess,
    args: LoadgenArgs,
    settings: Settings,
    *,
    per_mb: bool = False,
    probe: Callable[[str], None] | None = None,
) -> Measurement:
    samples: dict[str, TreeSample] = {}
    busy: dict[str, float] = {}
    cores = _pinned_cores(settings)

    def on_mark(mark: str) -> None:
        samples[mark] = server.sample()
        busy[mark] = busy_core_seconds(cores)
        if probe is not None:
            probe(mark)

    result = run_loadgen(
        args, server.host, server.port, cores=settings.loadgen_cores, on_mark=on_mark
    )
    if not server.is_alive():
        raise ServerError(f"{server.spec.name} died under load: {server.stderr_tail()}")
    start, end = samples["start"], samples["end"]
    seconds = float(result["seconds"])
    units = result["bytes"] / 1e6 if per_mb else float(result["requests"])
    return Measurement.of(
        units=units,
        seconds=seconds,
        server_cpu_s=end.cpu_s - start.cpu_s,
        loadgen_cpu_s=result["loadgen_cpu_s"],
        busy_s=busy["end"] - busy["start"],
        sample=end,
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


#: Clients downloading at once in the ``sendfile`` workload.
SENDFILE_CLIENTS = 4


def run_sendfile(server: ServerProcess, settings: Settings) -> Measurement:
    args = _loadgen("download", settings, conns=SENDFILE_CLIENTS)
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
    return Measurement.of(
        units=requests,
        seconds=elapsed,
        server_cpu_s=after.cpu_s - before.cpu_s,
        loadgen_cpu_s=wrk_cpu_s,
        busy_s=busy_after - busy_before,
        sample=middle,
        errors=errors,
        latency_us=latency,
    )


# -- Pre-fork scaling: N workers against one, and what each worker costs ----------------

#: How long a pre-fork server may take, after its ready line, to have all workers up.
WORKERS_UP_TIMEOUT_S = 10.0
#: Pause after the workers are up, before the idle memory sample: boot allocations settle.
WORKERS_SETTLE_S = 0.2


def scaling_layout(spec: ServerSpec, settings: Settings) -> Settings:
    """``all-cores``: server and load generator may each use every usable core."""
    if spec.options.get("layout") != "all-cores" or settings.server_cores is None:
        return settings
    cores = tuple(sorted(os.sched_getaffinity(0)))
    return replace(settings, server_cores=cores, loadgen_cores=cores)


def _wait_for_workers(server: ServerProcess, workers: int) -> list[ProcessSample]:
    """The session's processes once the master and all ``workers`` are running."""
    deadline = time.monotonic() + WORKERS_UP_TIMEOUT_S
    while True:
        processes = session_processes(server.pid)
        if len(processes) >= workers + 1:
            time.sleep(WORKERS_SETTLE_S)
            return session_processes(server.pid)
        if not server.is_alive() or time.monotonic() > deadline:
            raise ServerError(
                f"{server.spec.name}: {len(processes) - 1}/{workers} workers up after "
                f"{WORKERS_UP_TIMEOUT_S:.0f} s: {server.stderr_tail()}"
            )
        time.sleep(0.05)


def _memory_split(processes: list[ProcessSample], master_pid: int) -> dict[str, Any]:
    """Master and per-worker memory (MiB), from one look at the session's processes."""
    master = [p for p in processes if p.pid == master_pid]
    workers = [p for p in processes if p.pid != master_pid]

    def mib(values: list[int]) -> list[float]:
        return [value / MIB for value in values]

    return {
        "master_rss_mib": master[0].rss_bytes / MIB if master else None,
        "master_pss_mib": master[0].pss_bytes / MIB if master else None,
        "master_uss_mib": master[0].uss_bytes / MIB if master else None,
        "worker_rss_mib": mib([p.rss_bytes for p in workers]),
        "worker_pss_mib": mib([p.pss_bytes for p in workers]),
        "worker_uss_mib": mib([p.uss_bytes for p in workers]),
        "worker_threads": [p.threads for p in workers],
        "total_pss_mib": sum(p.pss_bytes for p in processes) / MIB,
        "total_rss_mib": sum(p.rss_bytes for p in processes) / MIB,
    }


def run_prefork_scaling(server: ServerProcess, settings: Settings) -> Measurement:
    """Churn against a pre-fork server; per-process CPU and memory, idle and under load."""
    workers = int(server.spec.options.get("workers", 1))
    idle = _wait_for_workers(server, workers)
    looks: dict[str, list[ProcessSample]] = {}

    def probe(mark: str) -> None:
        looks[mark] = session_processes(server.pid)

    measurement = _measure(server, _loadgen("churn", settings), settings, probe=probe)
    start = {p.pid: p for p in looks["start"]}
    end = {p.pid: p for p in looks["end"]}
    master_cpu_s = 0.0
    if server.pid in start and server.pid in end:
        master_cpu_s = end[server.pid].cpu_s - start[server.pid].cpu_s
    worker_cpu_share = [
        (end[pid].cpu_s - start[pid].cpu_s) / measurement.seconds
        for pid in sorted(end)
        if pid != server.pid and pid in start
    ]
    measurement.extra.update(
        {
            "family": server.spec.options.get("family", ""),
            "conns": settings.conns,
            "workers": workers,
            "layout": server.spec.options.get("layout", ""),
            "server_cores": list(settings.server_cores or ()),
            "loadgen_cores": list(settings.loadgen_cores or ()),
            "master_cpu_share": master_cpu_s / measurement.seconds,
            "worker_cpu_share": worker_cpu_share,
            "idle": _memory_split(idle, server.pid),
            "load": _memory_split(looks["end"], server.pid),
        }
    )
    return measurement


# -- Pool memory: 2,000 connections at once against bounded and unbounded threads -------

#: Seconds between looks at the server while the pool-memory client runs (for peaks).
POOL_SAMPLE_EVERY_S = 0.05


def _thread_bound(spec: ServerSpec) -> int | None:
    """A pool's ``max_workers`` (as configured for this server), or None if unbounded."""
    kwargs = spec.options.get("kwargs", {})
    if "max_workers" in kwargs:
        return int(kwargs["max_workers"])
    if spec.launcher != "sockserve":
        return None
    found = find_sockserve_class(spec.target)
    bound = getattr(found, "max_workers", None)
    return bound if isinstance(bound, int) else None


def _with_repo_on_path() -> dict[str, str]:
    """This environment with the repository root first on PYTHONPATH: bench/ is not installed."""
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def run_pool_memory(server: ServerProcess, settings: Settings) -> Measurement:
    """Hold ``pool_conns`` connections at once (bench/holdclient.py), then let them go."""
    cores = _pinned_cores(settings)
    sources = 200 if server.host.startswith("127.") else 0
    argv = [
        sys.executable,
        *("-m", "bench.holdclient", "--host", server.host, "--port", str(server.port)),
        *("--conns", str(settings.pool_conns), "--size", str(settings.size)),
        *("--hold", str(settings.pool_hold_s)),
        *("--drain-timeout", str(settings.pool_drain_timeout_s)),
        *("--connect-timeout", str(settings.connect_timeout_s), "--sources", str(sources)),
    ]
    budget = settings.connect_timeout_s + settings.pool_hold_s + settings.pool_drain_timeout_s + 30
    idle = server.sample()
    busy_before = busy_core_seconds(cores)
    peak = {"threads": idle.threads, "rss_bytes": idle.rss_bytes, "processes": idle.processes}
    hold_sample: TreeSample | None = None
    hold: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    process = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=_with_repo_on_path(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=pin_and_raise_limits(settings.loadgen_cores),
    )
    assert process.stdin is not None
    try:
        output = ChildLines(process)
        deadline = time.monotonic() + budget
        while result is None:
            if time.monotonic() > deadline:
                raise ServerError(f"the pool-memory client hung for more than {budget:.0f} s")
            lines = output.read(POOL_SAMPLE_EVERY_S)
            look = server.sample()
            peak["threads"] = max(peak["threads"], look.threads)
            peak["rss_bytes"] = max(peak["rss_bytes"], look.rss_bytes)
            peak["processes"] = max(peak["processes"], look.processes)
            if lines is None:
                raise ServerError(f"the pool-memory client exited early: {output.stderr()}")
            for line in lines:
                if line.startswith(b"MARK hold "):
                    hold = json.loads(line[len(b"MARK hold ") :])
                    hold_sample = look
                    process.stdin.write(b"go\n")
                    process.stdin.flush()
                elif line.startswith(b"RESULT "):
                    result = json.loads(line[len(b"RESULT ") :])
        process.wait(timeout=30)
    finally:
        close_process(process)
    end, busy_after = server.sample(), busy_core_seconds(cores)
    if not server.is_alive():
        raise ServerError(f"{server.spec.name} died under load: {server.stderr_tail()}")
    assert hold_sample is not None
    seconds = max(float(result["seconds"]), 1e-9)
    served = float(result["served"])
    cpu_s = end.cpu_s - idle.cpu_s
    client_cpu_s = float(result["client_cpu_s"])
    held = int(hold.get("connected", 0))
    grown = hold_sample.rss_bytes - idle.rss_bytes
    return Measurement.of(
        units=served,
        seconds=seconds,
        server_cpu_s=cpu_s,
        loadgen_cpu_s=client_cpu_s,
        busy_s=busy_after - busy_before,
        sample=hold_sample,
        errors=int(result["errors"]) + int(result["dropped"]),
        stalled_conns=int(result["unserved"]),
        latency_us={
            key: value * 1e6 if value is not None else None
            for key, value in result["latency_s"].items()
        },
        extra={
            "conns": settings.pool_conns,
            "thread_bound": _thread_bound(server.spec),
            "hold_connected": held,
            "hold_served": int(hold.get("served", 0)),
            "hold_s": float(hold.get("seconds", 0.0)),
            "served": int(served),
            "drained": bool(result["drained"]),
            "drain_s": float(result["drain_s"]),
            "dropped": int(result["dropped"]),
            "idle_rss_mib": idle.rss_bytes / MIB,
            "idle_threads": idle.threads,
            "kib_per_held_conn": grown / 1024 / held if held else None,
            "peak_threads": peak["threads"],
            "peak_rss_mib": peak["rss_bytes"] / MIB,
            "peak_processes": peak["processes"],
        },
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
    "sendfile": Workload(
        "sendfile",
        "download",
        "MB/s",
        "MB",
        lambda s: (
            f"{SENDFILE_CLIENTS} clients in a loop: connect, ask, receive a "
            f"{DOWNLOAD_BYTES >> 20} MiB file the server sends with sendfile, close"
        ),
        run_sendfile,
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
    "prefork_scaling": Workload(
        "prefork_scaling",
        "echo",
        "conn/s",
        "connection",
        lambda s: (
            f"pre-fork workers {' vs '.join(map(str, SCALING_WORKERS))} under churn "
            f"({s.conns} clients: connect, {s.size} bytes, echo, close), server and load "
            "generator on all cores, then server on one core and load generator on the other"
        ),
        run_prefork_scaling,
        servers=("sockserve.Prefork*@*",),
        quick_servers=("sockserve.Prefork(workers=*)@all-cores",),
        layout=scaling_layout,
        table="prefork_scaling",
        extra_s=lambda s: WORKERS_SETTLE_S + 0.5,  # workers booting, then settling
    ),
    "pool_memory": Workload(
        "pool_memory",
        "echo",
        "conn/s",
        "connection",
        lambda s: (
            f"{s.pool_conns:,} connections opened at once (at most 4 opening at a time), "
            f"each sends {s.size} bytes and, once answered, holds until all are answered "
            f"or {s.pool_hold_s:g} s after the last connected; then each closes once answered"
        ),
        run_pool_memory,
        servers=(
            "sockserve.ThreadPoolTCPServer",
            "sockserve.ThreadingTCPServer",
            "stdlib.ThreadingTCPServer",
            "sockserve.AsyncTCPServer",
        ),
        quick_servers=("sockserve.ThreadPoolTCPServer",),
        table="pool_memory",
        # Its own phases replace warm-up and duration: connect, hold, drain.
        extra_s=lambda s: s.pool_hold_s + 1.0 - s.warmup_s - s.duration_s,
    ),
}
