"""The servers under test: a registry, and the process that runs one of them.

Rule 1: a server is data. Every peer is a ``ServerSpec``: a name, the launcher that builds
it inside the server process (``bench/peers.py``), and what it needs to exist. Adding a
sockserve mode is one line in ``SOCKSERVE_MODES``; it is benchmarked as soon as
``getattr(sockserve, name, None)`` (or a module in ``SOCKSERVE_MODULES``) finds it, and
skipped with the reason until then.

Rule 2: a server runs in its own process, in its own session, pinned to its core. It
prints ``READY <host> <port>`` once bound (port 0: the kernel picks, so nothing races);
``ServerProcess`` waits for that line, samples the session's CPU and memory, and kills
the whole session when done, forked children included.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .build import BuildError, cache_dir, compile_c
from .procstat import TreeSample, sample_session

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Seconds a server may take from exec to its ready line (imports, a C compile is before).
READY_TIMEOUT_S = 20.0
#: Seconds between SIGTERM and SIGKILL when stopping a server's session.
STOP_GRACE_S = 2.0

#: The figures' reference points: every result is also given as a ratio to these.
BASELINE = {
    "echo": "stdlib.ThreadingTCPServer",
    "http": "http.stdlib",
    "download": "sendfile.stdlib.ThreadingTCPServer",
}
CEILING = {"echo": "c.epoll", "http": "http.c", "download": "sendfile.c"}

#: The file the ``sendfile`` workload's servers send to every client.
DOWNLOAD_BYTES = 64 * 1024 * 1024
#: In a server's ``options["args"]``: replaced by ``download_file()``'s path.
DOWNLOAD_FILE_ARG = "{download_file}"


def download_file() -> str:
    """The path of a ``DOWNLOAD_BYTES`` file in the bench cache, made on first use."""
    path = cache_dir() / f"download-{DOWNLOAD_BYTES >> 20}MiB.bin"
    if not path.exists() or path.stat().st_size != DOWNLOAD_BYTES:
        block = bytes(range(256)) * 4096  # 1 MiB
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        with open(partial, "wb") as file:
            for _ in range(DOWNLOAD_BYTES // len(block)):
                file.write(block)
        os.replace(partial, path)  # atomic: a concurrent reader sees all of it or none
    return str(path)


@dataclass(frozen=True)
class ServerSpec:
    """One server under test.

    ``launcher`` names a function in ``bench.peers.LAUNCHERS`` (or ``"c"`` for the C
    binary); ``target`` and ``options`` are its arguments. ``requires`` are modules that
    must import, ``needs_class`` a ``(module, class)`` that must exist, for the server to run.
    """

    name: str
    group: str
    launcher: str
    protocol: str = "echo"
    target: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    needs_class: tuple[str, str] | None = None
    note: str = ""
    #: If set, the server runs only in these workloads (and is left out of every other).
    only_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class SockserveMode:
    """A sockserve server to benchmark: its class, handler kind and constructor keywords.

    ``class_name`` may join names with "+" (``"PreforkMixIn+ThreadingMixIn+TCPServer"``)
    to benchmark a composition the way a user would write it; ``label`` then names it.
    """

    class_name: str
    handler: str = "sync"  # "sync": BaseRequestHandler echo; "async": AsyncStreamRequestHandler
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    #: Run with the async mode's compiled fast path off (SOCKSERVE_PURE_PYTHON=1), as on
    #: a machine that had no C compiler when sockserve was installed.
    pure_python: bool = False
    #: Import sockserve from this directory (another checkout's ``src``) instead of this
    #: checkout's: see ``BEFORE_SRC_VARIABLE``.
    src: str = ""

    @property
    def name(self) -> str:
        return f"sockserve.{self.label or self.class_name}"


#: Where sockserve classes are looked up, first hit wins: new modes may land at the top
#: level or in a subpackage before they are re-exported.
SOCKSERVE_MODULES = ("sockserve", "sockserve.aio", "sockserve.prefork")

#: Every sockserve mode. Modes that do not exist yet are listed so they are picked up
#: the day they do (and reported as skipped until then).
SOCKSERVE_MODES = (
    SockserveMode("TCPServer"),
    SockserveMode("ThreadingTCPServer"),
    SockserveMode("ForkingTCPServer"),
    SockserveMode("ThreadPoolTCPServer"),
    # Its default worker count is the usable cores: one, pinned; so one connection at a time.
    SockserveMode("PreforkTCPServer"),
    SockserveMode(
        "PreforkMixIn+ThreadingMixIn+TCPServer",
        kwargs={"workers": 2},
        label="Prefork+Threading(workers=2)",
    ),
    # event_loop="auto": uvloop where it is installed (as a user gets it), else asyncio's.
    SockserveMode("AsyncTCPServer", handler="async"),
    SockserveMode(
        "AsyncTCPServer", handler="async", pure_python=True, label="AsyncTCPServer(pure Python)"
    ),
    # The standard library's loop, to compare with the asyncio peers on the same loop.
    SockserveMode(
        "AsyncTCPServer",
        handler="async",
        kwargs={"event_loop": "asyncio"},
        label="AsyncTCPServer(asyncio loop)",
    ),
)


#: ``BENCH_BEFORE_SRC=<another checkout>/src python -m bench ...`` adds each async mode
#: again, labelled "(before)", importing sockserve from there (build its extension
#: first: ``python3 setup.py build_ext --inplace`` in that checkout). A change and what
#: it changed then run interleaved, repeat by repeat, in one run on the same machine.
BEFORE_SRC_VARIABLE = "BENCH_BEFORE_SRC"


def _before_modes(src: str) -> tuple[SockserveMode, ...]:
    return tuple(
        replace(mode, label=f"{mode.label or mode.class_name}(before)", src=src)
        for mode in SOCKSERVE_MODES
        if mode.handler == "async" and src
    )


def _stdlib(class_name: str) -> ServerSpec:
    return ServerSpec(f"stdlib.{class_name}", "stdlib", "socketserver", target=class_name)


def _sockserve(mode: SockserveMode, **fields: Any) -> ServerSpec:
    return ServerSpec(
        mode.name,
        "sockserve",
        "sockserve",
        target=mode.class_name,
        options={
            "handler": mode.handler,
            "kwargs": mode.kwargs,
            "pure_python": mode.pure_python,
            "src": mode.src,
            **fields.pop("options", {}),
        },
        needs_class=("sockserve", mode.class_name),
        **fields,
    )


#: The cores this harness may use; pre-fork scaling compares one worker with this many.
USABLE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
#: Worker counts the pre-fork scaling workload compares: one, and one per core (at least 2).
SCALING_WORKERS = (1, max(2, USABLE_CORES))
#: Where a scaling run puts the server and the load generator (see workloads.py):
#: "all-cores": both may run on every usable core, the scheduler places them;
#: "one-core": server on the server core, load generator on its own (the usual layout).
SCALING_LAYOUTS = ("all-cores", "one-core")
#: The pre-fork compositions scaled: single-threaded workers, and a bounded pool in each.
SCALING_CLASSES = (
    ("PreforkTCPServer", "Prefork"),
    ("PreforkMixIn+ThreadPoolMixIn+TCPServer", "Prefork+ThreadPool"),
)


def _scaling_specs() -> list[ServerSpec]:
    """Pre-fork servers for the ``prefork_scaling`` workload only: class × workers × layout."""
    specs = []
    for class_name, label in SCALING_CLASSES:
        for layout in SCALING_LAYOUTS:
            for workers in SCALING_WORKERS:
                mode = SockserveMode(
                    class_name,
                    kwargs={"workers": workers},
                    label=f"{label}(workers={workers})@{layout}",
                )
                specs.append(
                    _sockserve(
                        mode,
                        options={"layout": layout, "workers": workers, "family": label},
                        only_in=("prefork_scaling",),
                    )
                )
    return specs


def _download_specs() -> list[ServerSpec]:
    """The servers of the ``sendfile`` workload (``bench/sendfile_peers.py``)."""
    async_server = ("sockserve", "AsyncTCPServer")
    return [
        ServerSpec(
            "sendfile.stdlib.ThreadingTCPServer",
            "stdlib",
            "download",
            protocol="download",
            target="socketserver",
            note="socket.sendfile",
        ),
        ServerSpec(
            "sendfile.asyncio.protocol",
            "asyncio",
            "download",
            protocol="download",
            target="asyncio",
            note="loop.sendfile",
        ),
        ServerSpec(
            "sendfile.uvloop.protocol",
            "uvloop",
            "download",
            protocol="download",
            target="uvloop",
            requires=("uvloop",),
            note="os.sendfile by hand (uvloop has no loop.sendfile)",
        ),
        ServerSpec(
            "sendfile.sockserve.AsyncTCPServer",
            "sockserve",
            "download",
            protocol="download",
            target="sockserve",
            note="writer.sendfile",
            needs_class=async_server,
        ),
        ServerSpec(
            "sendfile.sockserve.AsyncTCPServer(asyncio loop)",
            "sockserve",
            "download",
            protocol="download",
            target="sockserve",
            options={"kwargs": {"event_loop": "asyncio"}},
            note="writer.sendfile",
            needs_class=async_server,
        ),
        ServerSpec(
            "sendfile.c",
            "c",
            "c",
            protocol="download",
            target="c_echo.c",
            options={"args": ["--download", DOWNLOAD_FILE_ARG]},
            note="epoll and sendfile(2): the practical ceiling",
        ),
    ]


#: Threads in the "many threads on one serve_forever" recipe: a fixed pool in disguise.
RECIPE_THREADS = 32

SERVERS: tuple[ServerSpec, ...] = (
    _stdlib("TCPServer"),
    _stdlib("ThreadingTCPServer"),
    _stdlib("ForkingTCPServer"),
    ServerSpec(
        "stdlib.threads-on-serve_forever",
        "stdlib",
        "serve_forever_threads",
        options={"threads": RECIPE_THREADS},
        note=f"one TCPServer, {RECIPE_THREADS} threads each calling serve_forever()",
    ),
    ServerSpec("asyncio.streams", "asyncio", "asyncio_streams", target="asyncio"),
    ServerSpec("asyncio.protocol", "asyncio", "asyncio_protocol", target="asyncio"),
    ServerSpec(
        "uvloop.streams", "uvloop", "asyncio_streams", target="uvloop", requires=("uvloop",)
    ),
    ServerSpec(
        "uvloop.protocol", "uvloop", "asyncio_protocol", target="uvloop", requires=("uvloop",)
    ),
    ServerSpec("gevent.StreamServer", "gevent", "gevent_stream", requires=("gevent",)),
    *(_sockserve(mode) for mode in SOCKSERVE_MODES),
    *(_sockserve(mode) for mode in _before_modes(os.environ.get(BEFORE_SRC_VARIABLE, ""))),
    *_scaling_specs(),
    ServerSpec("c.epoll", "c", "c", target="c_echo.c", note="the practical ceiling"),
    # HTTP: one http.server handler, served by the stdlib and by sockserve underneath.
    ServerSpec("http.stdlib", "stdlib", "http", protocol="http", target="socketserver"),
    ServerSpec(
        "http.stdlib+nodelay",
        "stdlib",
        "http",
        protocol="http",
        target="socketserver",
        options={"nodelay": True},
        note="the same handler with disable_nagle_algorithm = True",
    ),
    ServerSpec("http.sockserve", "sockserve", "http", protocol="http", target="sockserve"),
    ServerSpec(
        "http.c", "c", "c", protocol="http", target="c_echo.c", options={"args": ["--http"]}
    ),
    # sendfile: one 64 MiB file to every client, each library's way to the kernel.
    *_download_specs(),
)

SERVERS_BY_NAME = {spec.name: spec for spec in SERVERS}


def find_sockserve_class(class_name: str) -> Any:
    """The class ``class_name`` from the first of ``SOCKSERVE_MODULES`` that has it, or None.

    ``"A+B+C"`` builds ``class _(A, B, C)``, or None if any part is missing.
    """
    if "+" in class_name:
        bases = [find_sockserve_class(part) for part in class_name.split("+")]
        if any(base is None for base in bases):
            return None
        return type(class_name.replace("+", "_"), tuple(bases), {})
    for module_name in SOCKSERVE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found = getattr(module, class_name, None)
        if found is not None:
            return found
    return None


def unavailable_reason(spec: ServerSpec) -> str | None:
    """Why ``spec`` cannot run on this machine, or None if it can."""
    for module in spec.requires:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install {module})"
    if spec.needs_class is not None:
        try:
            found = find_sockserve_class(spec.needs_class[1])
        except Exception as exc:  # a broken work-in-progress module must not stop the run
            return f"importing sockserve failed: {exc!r}"
        if found is None:
            return f"sockserve has no {spec.needs_class[1].replace('+', ', ')} yet"
    if spec.launcher == "c":
        try:
            compile_c(spec.target)
        except BuildError as exc:
            return str(exc)
    return None


class ServerError(RuntimeError):
    """A server did not start, or died; the message carries the tail of its stderr."""


def pin_and_raise_limits(cores: Sequence[int] | None) -> Callable[[], None]:
    """A ``preexec_fn``: pin to ``cores`` and raise the descriptor limit to the hard one.

    Pinning before exec matters: threads and forked children inherit the affinity of
    the thread that creates them, and setting it afterwards only moves the main thread.
    """

    def setup() -> None:
        if cores:
            os.sched_setaffinity(0, cores)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


class ServerProcess:
    """One server under test, running in its own session. Use as a context manager."""

    def __init__(self, spec: ServerSpec, *, cores: Sequence[int] | None, host: str) -> None:
        self.spec = spec
        # Closed in close(): it outlives __init__, so no with-block can own it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        if spec.launcher == "c":
            args = [
                download_file() if arg == DOWNLOAD_FILE_ARG else arg
                for arg in spec.options.get("args", [])
            ]
            argv = [str(compile_c(spec.target)), "--host", host, *args]
        else:
            argv = [sys.executable, "-m", "bench.peers", spec.name, host]
        # bench/ is a package at the repository root, not installed: put the root first,
        # then this checkout's sockserve (not whichever one is installed: an editable
        # install of another worktree would otherwise be what is measured).
        path = [
            str(REPO_ROOT),
            str(REPO_ROOT / "src"),
            *filter(None, [os.environ.get("PYTHONPATH")]),
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self._process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
            preexec_fn=pin_and_raise_limits(cores),
        )
        self.pid = self._process.pid
        try:
            self.host, self.port = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> tuple[str, int]:
        assert self._process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = b""
        fd = self._process.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"{self.spec.name}: no ready line in {READY_TIMEOUT_S} s")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 256)
                if not chunk:
                    raise ServerError(f"{self.spec.name} exited before ready: {self.stderr_tail()}")
                line += chunk
        words = line.split()
        if len(words) != 3 or words[0] != b"READY":
            raise ServerError(f"{self.spec.name}: unexpected ready line {line!r}")
        return words[1].decode(), int(words[2])

    def sample(self) -> TreeSample:
        """CPU, RSS, threads and processes of the server's whole session, now."""
        return sample_session(self.pid)

    def is_alive(self) -> bool:
        return self._process.poll() is None

    def stderr_tail(self, max_bytes: int = 2000) -> str:
        """The last bytes the server wrote to stderr, for error messages."""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - max_bytes))
        return self._stderr.read().decode(errors="replace").strip() or "(no stderr)"

    def stop(self) -> None:
        """SIGTERM the session, SIGKILL it after a grace period, and reap the server."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break  # the whole session is gone
            try:
                self._process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                # The leader is gone; forked children may linger in the session.
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        if self._process.poll() is None:
            self._process.wait(timeout=STOP_GRACE_S)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def close(self) -> None:
        self.stop()
        self._stderr.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
