"""The pre-fork server, run as users run it: a master process with workers of its own.

Each test writes a small program to ``tmp_path`` that builds a ``PreforkMixIn`` server,
prints ``ready <address> <master pid>`` and calls ``serve_forever``. The test reads the
master's stdout and log lines on reader threads and waits for the lines it needs (a
worker's pid comes from the master's ``worker <pid> ready`` line), so nothing sleeps.

The program's process tree holds the write end of a pipe the test made; when every
process of the tree has exited the test reads EOF there, which is how "no orphans" is
checked without polling. After ``serve_forever`` returns, the program asks
``waitpid(-1, WNOHANG)`` whether it has any child left, alive or zombie: "no zombies".
Every master runs in its own session, and the fixture kills that session if a test
fails halfway.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import sockserve
from sockserve.errors import ConfigurationError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="pre-forking needs os.fork")

if hasattr(os, "fork"):
    from sockserve.prefork import PreforkTCPServer, default_worker_count

#: Bounds a wait that only a failing test reaches (a loaded CI machine starts Python slowly).
WAIT_TIMEOUT = 20.0
#: Every client socket's timeout.
CLIENT_TIMEOUT = 10.0

PROGRAM = """
import errno, json, logging, os, sys, threading
import sockserve
from sockserve.errors import SockserveError
from sockserve.prefork import PreforkMixIn

config = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(name)s: %(message)s")
MASTER = os.getpid()


def say(line):
    # One write per line, straight to the descriptor: the control thread writes
    # too, and a buffered file's lock held by that thread at fork() would stay
    # held forever in a worker.
    os.write(1, (line + "\\n").encode())


class Stream(sockserve.StreamRequestHandler):
    def handle(self):
        self.wfile.write(f"hello {os.getpid()}\\n".encode())
        for line in self.rfile:
            if line.strip() == b"finish":
                self.wfile.write(f"done {os.getpid()}\\n".encode())
                return


class Datagram(sockserve.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(str(os.getpid()).encode())


class AsyncStream(sockserve.AsyncStreamRequestHandler):
    async def handle(self):
        self.writer.write(f"hello {os.getpid()}\\n".encode())
        await self.writer.drain()
        async for line in self.reader:
            if line.strip() == b"finish":
                self.writer.write(f"done {os.getpid()}\\n".encode())
                await self.writer.drain()
                return


def note_boot():
    with open(config["boots"], "a") as boots:
        boots.write(f"{os.getpid()}\\n")


BASES = {"tcp": sockserve.TCPServer, "udp": sockserve.UDPServer,
         "unix": getattr(sockserve, "UnixStreamServer", None),
         "async": sockserve.AsyncTCPServer if config["kind"] == "async" else None}
MIXINS = (sockserve.ThreadingMixIn,) if config["threads"] else ()


class Server(PreforkMixIn, *MIXINS, BASES[config["kind"]]):
    def server_bind(self):
        if os.getpid() != MASTER:
            note_boot()
            if config["fail"] == "bind":
                raise OSError(errno.EADDRINUSE, "port taken by someone else")
        super().server_bind()

    def service_actions(self):
        if not config["plain_service_actions"]:
            super().service_actions()  # else: an override that forgets super(), as many do

    def worker_init(self):
        if not self.reuse_port:
            note_boot()
        if config["fail"] == "init":
            raise RuntimeError("cannot open the database")


shutdown_asked, shutdown_answered = threading.Event(), threading.Event()


def control():
    for line in os.fdopen(os.dup(0), "rb", buffering=0):
        command = line.strip()
        if command == b"pids":
            say("pids " + " ".join(map(str, server.worker_pids())))
        elif command == b"shutdown":
            shutdown_asked.set()
            server.shutdown()
            say("shutdown returned")
            shutdown_answered.set()
        elif command.startswith(b"stats "):  # stats N: once N requests have finished
            wanted = int(command.split()[1])
            server._supervisor.wait_for_stats(lambda s: s.finished >= wanted, 10)
            say("stats " + json.dumps(server.stats().to_dict()))
        elif command.startswith(b"drain "):
            shutdown_asked.set()
            report = server.drain(float(command.split()[1]))
            say(f"drained {report.finished} {report.aborted}")
            shutdown_answered.set()


address = config["path"] if config["kind"] == "unix" else ("127.0.0.1", 0)
handler = {"udp": Datagram, "async": AsyncStream}.get(config["kind"], Stream)
server = Server(address, handler, **config["settings"])
say(f"ready {json.dumps(server.server_address)} {MASTER}")
if config["control"]:
    threading.Thread(target=control, daemon=True).start()
code = 0
try:
    server.serve_forever(poll_interval=0.2)
except SockserveError as exc:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    code = 2
finally:
    server.server_close()
if shutdown_asked.is_set():
    shutdown_answered.wait(10)  # serve_forever returns as shutdown() does: let it answer
try:
    os.waitpid(-1, os.WNOHANG)
    left = "some"
except ChildProcessError:
    left = "none"
say(f"children {left}")
sys.exit(code)
"""


class Master:
    """A running master program; its output lines are collected by reader threads."""

    def __init__(
        self,
        directory: Path,
        *,
        kind: str = "tcp",
        threads: bool = True,
        fail: str = "",
        control: bool = False,
        plain_service_actions: bool = False,
        **settings: Any,
    ) -> None:
        directory.mkdir()
        program = directory / "master.py"
        program.write_text(PROGRAM)
        self.boots = directory / "boots"
        self.socket_path = str(directory / "sock")
        config = {
            "kind": kind,
            "threads": threads,
            "fail": fail,
            "control": control,
            "plain_service_actions": plain_service_actions,
            "boots": str(self.boots),
            "path": self.socket_path,
            "settings": settings,
        }
        self.family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        self._tree_read, tree_write = os.pipe()
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, str(program), json.dumps(config)],
            stdin=subprocess.PIPE if control else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(tree_write,),
            start_new_session=True,  # its own process group, for the clean-up below
        )
        os.close(tree_write)
        streams = {"out": self.process.stdout, "err": self.process.stderr}
        self._readers = [
            threading.Thread(target=self._collect, args=(name, stream), daemon=True)
            for name, stream in streams.items()
        ]
        for reader in self._readers:
            reader.start()
        self.pid = self.process.pid
        self.address: Any = None

    def wait_ready(self) -> None:
        ready = self.wait_for("out", r"^ready (.+) (\d+)$")[0]
        address = json.loads(ready[1])
        self.address = tuple(address) if isinstance(address, list) else address
        assert int(ready[2]) == self.pid

    def _collect(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                self.lines[name].append(line.rstrip("\n"))
                self._changed.notify_all()

    def lines_of(self, stream: str) -> list[str]:
        with self._changed:
            return list(self.lines[stream])

    def _matching(self, stream: str, pattern: str) -> list[re.Match[str]]:
        return [m for m in map(re.compile(pattern).search, self.lines[stream]) if m is not None]

    def wait_for(self, stream: str, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` lines of ``stream`` matching ``pattern``, waiting for them."""
        found: list[re.Match[str]] = []

        def enough() -> bool:
            found[:] = self._matching(stream, pattern)
            return len(found) >= count

        with self._changed:
            if not self._changed.wait_for(enough, WAIT_TIMEOUT):
                raise AssertionError(
                    f"no {count} line(s) matching {pattern!r} on std{stream} within "
                    f"{WAIT_TIMEOUT} s; got:\n" + "\n".join(self.lines["out"] + self.lines["err"])
                )
        return found[:count]

    def ready_pids(self, count: int) -> list[int]:
        return [int(m[1]) for m in self.wait_for("err", r"worker (\d+) ready", count)]

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def command(self, text: str, answer: str) -> re.Match[str]:
        """Write a line to the control thread; wait for the next stdout line matching."""
        assert self.process.stdin is not None
        with self._changed:
            before = len(self._matching("out", answer))
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return self.wait_for("out", answer, before + 1)[-1]

    def wait(self) -> int:
        """Wait for the master to exit and for every process of its tree to be gone."""
        code = self.process.wait(WAIT_TIMEOUT)
        assert self.tree_is_gone(), "processes of the master's tree are still running"
        for reader in self._readers:
            reader.join(WAIT_TIMEOUT)
        return code

    def tree_is_gone(self) -> bool:
        """True once no process holds the pipe's write end (EOF), within the deadline."""
        readable, _, _ = select.select([self._tree_read], [], [], WAIT_TIMEOUT)
        return bool(readable) and os.read(self._tree_read, 1) == b""

    def stderr(self) -> str:
        return "\n".join(self.lines_of("err"))

    def close(self) -> None:
        """Kill whatever is left of the tree (a failed test), then release everything."""
        if self.process.poll() is None or not self.tree_is_gone_now():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(WAIT_TIMEOUT)
        for reader in self._readers:
            reader.join(WAIT_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        os.close(self._tree_read)

    def tree_is_gone_now(self) -> bool:
        readable, _, _ = select.select([self._tree_read], [], [], 0)
        return bool(readable)

    # -- clients -------------------------------------------------------------------------

    def connect(self) -> Client:
        return Client(self.family, self.address)

    def request(self) -> int:
        """One whole request; the pid of the worker that served it."""
        return self.connect().finish()


class Client:
    """A connection whose request has been accepted: the worker said hello."""

    def __init__(self, family: int, address: Any) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        try:
            self.sock.connect(address)
            self.file = self.sock.makefile("rb")
            hello = self.file.readline().split()
        except BaseException:
            self.sock.close()
            raise
        assert hello[:1] == [b"hello"], hello
        self.pid = int(hello[1])

    def finish(self) -> int:
        """Ask the worker to complete the request; the pid that answered."""
        try:
            self.sock.sendall(b"finish\n")
            done = self.file.readline().split()
        finally:
            self.close()
        assert done[:1] == [b"done"], f"request on worker {self.pid} failed: {done}"
        return int(done[1])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Master]]:
    started: list[Master] = []

    def start_master(**options: Any) -> Master:
        master = Master(tmp_path / f"master{len(started)}", **options)
        started.append(master)  # before waiting: a master that never gets ready is killed too
        master.wait_ready()
        return master

    yield start_master
    for master in started:
        master.close()


def process_state(pid: int) -> str | None:
    """The state letter in ``/proc/<pid>/stat`` (``Z`` for a zombie); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


def assert_reaped(pid: int) -> None:
    if sys.platform.startswith("linux"):
        assert process_state(pid) is None, f"worker {pid} is still there (not reaped)"


def assert_clean_exit(master: Master, expected: int = 0) -> None:
    code = master.wait()
    assert code == expected, master.stderr()
    assert master.wait_for("out", r"^children (\w+)$")[0][1] == "none"
    assert "Traceback" not in master.stderr()


# -- construction ----------------------------------------------------------------------


class Handler(sockserve.BaseRequestHandler):
    pass


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": -2}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"worker_timeout": -1}, "worker_timeout"),
        ({"graceful_timeout": -0.5}, "graceful_timeout"),
        ({"max_requests": -1}, "max_requests"),
        ({"max_requests_jitter": -3}, "max_requests_jitter"),
    ],
)
def test_nonsensical_settings_fail_at_construction(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PreforkTCPServer(("127.0.0.1", 0), Handler, **settings)
    message = str(caught.value)
    assert message.startswith(named)
    assert "\n" not in message


def test_a_bad_class_attribute_fails_too() -> None:
    class NoWorkers(PreforkTCPServer):
        workers = 0

    with pytest.raises(ConfigurationError, match="workers must be an int >= 1, got 0"):
        NoWorkers(("127.0.0.1", 0), Handler)


def test_a_platform_without_fork_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fork")
    with pytest.raises(ConfigurationError, match="needs os.fork"):
        PreforkTCPServer(("127.0.0.1", 0), Handler)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_reuse_port_on_a_unix_socket_fails(tmp_path: Path) -> None:
    from sockserve.prefork import PreforkUnixStreamServer

    with pytest.raises(ConfigurationError, match="reuse_port needs an IP server"):
        PreforkUnixStreamServer(str(tmp_path / "sock"), Handler, reuse_port=True)
    assert not (tmp_path / "sock").exists()


def test_defaults_and_shutdown_before_serve_forever() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), Handler)
    try:
        assert server.workers == default_worker_count() >= 1
        assert server.worker_pids() == []
        server.shutdown()  # before serve_forever: the next one returns at once, forking none
        server.serve_forever()
        assert server.worker_pids() == []
    finally:
        server.server_close()
    assert server.socket.fileno() == -1


# -- serving ---------------------------------------------------------------------------


def test_requests_are_served_by_every_worker(start: Callable[..., Master]) -> None:
    master = start(threads=False, workers=3)
    pids = set(master.ready_pids(3))
    # Single-threaded workers: each held connection occupies one worker, so three held
    # connections are necessarily served by three different processes.
    clients = [master.connect() for _ in range(3)]
    assert {client.pid for client in clients} == pids
    assert master.pid not in pids
    assert [client.finish() for client in clients] == [client.pid for client in clients]
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


def test_datagrams_are_served_by_the_workers(start: Callable[..., Master]) -> None:
    master = start(kind="udp", workers=2)
    pids = set(master.ready_pids(2))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        for _ in range(5):
            client.sendto(b"which pid?", master.address)
            assert int(client.recv(100)) in pids
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_async_workers_each_run_an_event_loop(start: Callable[..., Master]) -> None:
    """``class S(PreforkMixIn, AsyncTCPServer)``: N processes, one event loop in each."""
    master = start(kind="async", threads=False, workers=2)
    pids = set(master.ready_pids(2))
    # One event loop serves many connections at once: ten held at the same time.
    clients = [master.connect() for _ in range(10)]
    assert {client.pid for client in clients} <= pids
    held = clients.pop()
    assert [client.finish() for client in clients] == [client.pid for client in clients]
    master.send(signal.SIGTERM)
    # A graceful stop lets the request in flight finish.
    assert held.finish() == held.pid
    assert_clean_exit(master)
    for pid in pids:
        assert_reaped(pid)


def test_unix_stream_server(start: Callable[..., Master]) -> None:
    master = start(kind="unix", workers=2)
    pids = set(master.ready_pids(2))
    assert {master.request() for _ in range(4)} <= pids
    master.send(signal.SIGTERM)
    assert_clean_exit(master)
    assert not os.path.exists(master.socket_path), "the master removes its socket file"


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
def test_reuse_port_workers_each_bind_their_own_socket(start: Callable[..., Master]) -> None:
    master = start(workers=2, reuse_port=True)
    pids = set(master.ready_pids(2))
    # The master holds the port without listening: were it listening, the kernel would
    # queue some of these connections where nobody accepts, and they would time out.
    assert {master.request() for _ in range(10)} <= pids
    assert len(master.boots.read_text().split()) == 2
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


# -- supervision -----------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_the_others_keep_serving(
    start: Callable[..., Master],
) -> None:
    master = start(workers=2)
    pids = master.ready_pids(2)
    held = master.connect()
    victim = next(pid for pid in pids if pid != held.pid)
    os.kill(victim, signal.SIGKILL)
    master.wait_for("err", rf"worker {victim} ended unexpectedly \(killed by SIGKILL\)")
    replacement = master.ready_pids(3)[2]
    assert replacement not in pids
    assert_reaped(victim)  # reaped before its replacement was started
    assert held.finish() == held.pid  # the request on the other worker was not lost
    assert master.request() in {held.pid, replacement}
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


def test_a_worker_terminated_by_someone_else_finishes_and_is_replaced(
    start: Callable[..., Master],
) -> None:
    master = start(workers=2)
    pids = master.ready_pids(2)
    held = master.connect()
    os.kill(held.pid, signal.SIGTERM)  # an operator, not the master
    master.wait_for("err", rf"worker {held.pid} is stopping on its own; replacing it")
    assert master.ready_pids(3)[2] not in pids  # started while the old one still drains
    assert held.finish() == held.pid
    master.wait_for("err", rf"worker {held.pid} exited \(stopped on its own, exit status 0\)")
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


def test_a_silent_worker_is_killed_and_replaced(start: Callable[..., Master]) -> None:
    # service_actions is overridden without super(): the heartbeat must not depend on it.
    master = start(workers=2, worker_timeout=1, plain_service_actions=True)
    pids = master.ready_pids(2)
    os.kill(pids[0], signal.SIGSTOP)  # a wedged process: no more heartbeats
    master.wait_for("err", rf"worker {pids[0]} was silent for .* killed it")
    assert master.ready_pids(3)[2] not in pids
    assert_reaped(pids[0])
    master.send(signal.SIGTERM)
    assert_clean_exit(master)
    assert len([line for line in master.lines_of("err") if "was silent" in line]) == 1


@pytest.mark.parametrize("where", ["init", "bind"])
def test_a_worker_that_fails_to_boot_stops_the_master(
    start: Callable[..., Master], where: str
) -> None:
    master = start(workers=2, fail=where, reuse_port=where == "bind")
    code = master.wait()
    assert code == 2
    errors = [line for line in master.lines_of("err") if line.startswith("error:")]
    assert len(errors) == 1, master.stderr()
    assert "failed to boot" in errors[0]
    assert ("cannot open the database" if where == "init" else "port taken") in errors[0]
    assert len(master.boots.read_text().split()) <= 2, "a worker was restarted"
    assert master.wait_for("out", r"^children (\w+)$")[0][1] == "none"


def test_max_requests_recycles_workers_without_failing_a_request(
    start: Callable[..., Master],
) -> None:
    master = start(workers=2, max_requests=3)
    served = [master.request() for _ in range(20)]  # each one must succeed
    counts = {pid: served.count(pid) for pid in served}
    assert max(counts.values()) <= 3, counts
    assert len(counts) >= 7
    master.wait_for("err", r"served its max_requests; recycling it", 6)
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


def test_max_requests_recycles_async_workers_too(start: Callable[..., Master]) -> None:
    """Counted by the serving core, not by wrapping process_request (which async
    servers never call): before, one async worker served all 20."""
    master = start(kind="async", threads=False, workers=2, max_requests=5)
    served = [master.request() for _ in range(20)]
    counts = {pid: served.count(pid) for pid in served}
    assert max(counts.values()) <= 5, counts
    assert len(counts) >= 4, counts
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


@pytest.mark.parametrize("kind", ["tcp", "async"])
def test_the_masters_stats_combine_its_workers(start: Callable[..., Master], kind: str) -> None:
    """Before, a master's stats() stayed all zeros while its workers served."""
    master = start(kind=kind, threads=kind == "tcp", workers=2, control=True, max_requests=4)
    for _ in range(10):  # crosses a recycling: retired workers' counts are kept
        master.request()
    stats = json.loads(master.command("stats 10", r"^stats (.+)$")[1])
    assert stats["accepted"] == 10
    assert stats["finished"] == 10
    assert stats["active"] == 0
    assert stats["handler_errors"] == 0
    assert stats["workers_alive"] == 2
    assert 1 <= stats["peak_active"] <= 10  # the largest one worker saw
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


@pytest.mark.parametrize("kind", ["tcp", "async"])
def test_the_masters_drain_drains_every_worker(start: Callable[..., Master], kind: str) -> None:
    """Before, drain(2.0) in a master returned (0, 0) at once and stopped no worker."""
    master = start(kind=kind, threads=kind == "tcp", workers=2, control=True)
    pids = set(master.ready_pids(2))
    in_flight = [master.connect() for _ in range(4)]
    assert {client.pid for client in in_flight} <= pids
    assert master.process.stdin is not None
    master.process.stdin.write("drain 5\n")
    master.process.stdin.flush()
    master.wait_for("err", r"draining \d+ request", 2)  # both workers are draining
    for client in in_flight:  # requests accepted before the drain all complete
        assert client.finish() in pids
    finished, aborted = master.wait_for("out", r"^drained (\d+) (\d+)$")[0].groups()
    assert (int(finished), int(aborted)) == (4, 0)
    with pytest.raises(ConnectionRefusedError):  # not listening: a health check fails
        master.connect()
    assert_clean_exit(master)


# -- signals ---------------------------------------------------------------------------


def test_sigterm_under_load_finishes_every_accepted_request(
    start: Callable[..., Master],
) -> None:
    master = start(workers=2)
    pids = set(master.ready_pids(2))
    held = [master.connect() for _ in range(8)]
    assert {client.pid for client in held} <= pids
    finished: list[int] = []
    failures: list[BaseException] = []

    def keep_requesting() -> None:
        # Requests keep coming while the server stops: each one that was accepted (the
        # worker said hello) must complete. Connecting may fail once workers stopped.
        while True:
            try:
                client = master.connect()
            except (OSError, AssertionError, IndexError):
                return
            try:
                finished.append(client.finish())
            except BaseException as exc:
                failures.append(exc)
                return

    load = [threading.Thread(target=keep_requesting) for _ in range(3)]
    for thread in load:
        thread.start()
    master.send(signal.SIGTERM)
    master.wait_for("err", r"worker \d+ stopping \(SIGTERM\)", 2)
    assert [client.finish() for client in held] == [client.pid for client in held]
    assert_clean_exit(master)
    for thread in load:
        thread.join(WAIT_TIMEOUT)
    assert not failures, failures
    for pid in pids:
        assert_reaped(pid)


def test_sigquit_stops_at_once(start: Callable[..., Master]) -> None:
    master = start(workers=2)
    master.ready_pids(2)
    held = master.connect()
    master.send(signal.SIGQUIT)
    assert_clean_exit(master)
    assert held.file.readline() == b""  # the worker left without finishing it
    held.close()


def test_a_second_sigint_turns_the_graceful_stop_into_a_fast_one(
    start: Callable[..., Master],
) -> None:
    master = start(workers=2)
    master.ready_pids(2)
    held = master.connect()
    master.send(signal.SIGINT)
    master.wait_for("err", r"worker \d+ stopping \(SIGTERM\)", 2)  # graceful: held waits
    master.send(signal.SIGINT)
    assert_clean_exit(master)
    assert held.file.readline() == b""
    held.close()


def test_sighup_rolls_new_workers_in_before_old_ones_drain(
    start: Callable[..., Master],
) -> None:
    master = start(workers=2)
    old = master.ready_pids(2)
    held = master.connect()
    master.send(signal.SIGHUP)
    new = master.ready_pids(4)[2:]
    assert not set(new) & set(old)
    for pid in old:
        master.wait_for("err", rf"stopping worker {pid} \(rolling restart\)")
    lines = master.lines_of("err")
    first_new_ready = lines.index(f"INFO sockserve.prefork: worker {new[0]} ready")
    first_stop = min(
        lines.index(f"INFO sockserve.prefork: stopping worker {pid} (rolling restart)")
        for pid in old
    )
    assert first_new_ready < first_stop, "an old worker was stopped before a new one was up"
    assert held.finish() == held.pid  # the old worker finished what it had accepted
    for pid in old:
        master.wait_for("err", rf"worker {pid} exited \(rolling restart, exit status 0\)")
        assert_reaped(pid)
    assert {master.request() for _ in range(6)} <= set(new)
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


def test_sigttin_and_sigttou_change_the_worker_count(start: Callable[..., Master]) -> None:
    master = start(workers=2, control=True)
    first = master.ready_pids(2)
    master.send(signal.SIGTTIN)
    third = master.ready_pids(3)[2]
    assert sorted(master.command("pids", r"^pids ([\d ]+)$")[1].split()) == sorted(
        map(str, [*first, third])
    )
    master.send(signal.SIGTTOU)
    gone = int(master.wait_for("err", r"stopping worker (\d+) \(one worker fewer\)")[0][1])
    master.wait_for("err", rf"worker {gone} exited \(one worker fewer, exit status 0\)")
    assert_reaped(gone)
    remaining = master.command("pids", r"^pids ([\d ]+)$")[1].split()
    assert sorted(remaining) == sorted(str(pid) for pid in [*first, third] if pid != gone)
    master.send(signal.SIGTERM)
    assert_clean_exit(master)


def test_shutdown_from_another_thread_stops_gracefully(start: Callable[..., Master]) -> None:
    master = start(workers=2, control=True)
    master.ready_pids(2)
    held = master.connect()
    stopped = threading.Thread(target=master.command, args=("shutdown", r"^shutdown returned$"))
    stopped.start()
    master.wait_for("err", r"worker \d+ stopping \(SIGTERM\)", 2)
    assert held.finish() == held.pid
    stopped.join(WAIT_TIMEOUT)
    assert not stopped.is_alive()
    assert_clean_exit(master)


def test_workers_exit_when_the_master_is_killed(start: Callable[..., Master]) -> None:
    master = start(workers=2)
    pids = master.ready_pids(2)
    held = master.connect()
    master.send(signal.SIGKILL)
    assert master.process.wait(WAIT_TIMEOUT) == -signal.SIGKILL
    # The workers notice (PR_SET_PDEATHSIG on Linux, EOF on the master's pipe anywhere)
    # and stop gracefully: what they had accepted still completes.
    assert held.finish() == held.pid
    assert master.tree_is_gone(), f"workers {pids} outlived their master"


SIGNAL_IN_FORKED_THREAD_CHILD = """
import os, signal, sys, threading, time
from sockserve.prefork.worker import run_pending_signal_handlers

def child(ready_fd):
    got = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    os.write(ready_fd, b"r")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        sum(range(1000))  # Python code, no system call to interrupt
        run_pending_signal_handlers()
    os._exit(0 if got else 1)

def fork_from_this_thread(result):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        child(write_fd)
    os.read(read_fd, 1)
    os.kill(pid, signal.SIGTERM)
    result.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

result = []
thread = threading.Thread(target=fork_from_this_thread, args=(result,))
thread.start()
thread.join()
sys.exit(result[0])
"""


def test_a_worker_forked_from_a_thread_runs_its_signal_handlers(tmp_path: Path) -> None:
    """A master serving from a thread: its workers must still obey SIGTERM.

    CPython 3.13.0 does not run a Python signal handler between bytecodes in a process
    forked from a non-main thread; the worker's loop runs pending handlers itself.
    """
    program = tmp_path / "forked_from_thread.py"
    program.write_text(SIGNAL_IN_FORKED_THREAD_CHILD)
    result = subprocess.run(
        [sys.executable, str(program)], capture_output=True, text=True, timeout=WAIT_TIMEOUT
    )
    assert result.returncode == 0, f"the handler never ran: {result.stderr}"
