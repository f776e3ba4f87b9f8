"""Scale-out: a real HAProxy in front of two ``sockserve serve`` processes; one drains.

What runs: two instances of the command (``--proxy-protocol v2 --trusted-proxy
127.0.0.1/32``, port 0, a line handler written to ``tmp_path`` that replies with its pid,
the client address it was given, and whether it is closing), then HAProxy with
``tests/scale_out_haproxy.cfg`` (the config docs/deployment.md shows) pointing at the
ports their ready lines name. Clients connect from 127.0.0.2-127.0.0.5 (all of 127/8 is
loopback), so the address HAProxy reports is not its own.

1. Both instances serve, and each reply names the client's own address and port.
2. Under load (threads making one-exchange connections and keep-alive connections), one
   instance gets SIGTERM while a request it accepted is mid-exchange. Its listener
   closes (a connect is refused), HAProxy's check marks it DOWN, traffic goes on at the
   other, the held request completes, and the instance exits 0 within its drain timeout.
   No client request fails: a connection the instance accepted is served, one it did
   not is refused at connect and HAProxy retries it elsewhere; a keep-alive reply says
   ``close`` when the server is draining, and the server closes only after such a reply.

Synchronisation without sleeps: ready lines, HAProxy's stderr (``Server .../a is DOWN``),
its stats socket (``show servers state``), process exits and a condition on the reply
counts; every wait has a deadline. HAProxy's frontend and stats sockets are bound by the
test and passed as ``fd@N`` (as in ``test_haproxy_interop.py``): no port race, and a
query sent before HAProxy is up waits in the socket's backlog.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from sockserve.cli.serving import STOP_GRACE_SECONDS
from test_cli import Command, running
from test_haproxy_interop import haproxy_or_skip

#: Seconds any socket operation, startup or stop may take (bounds a failing test only).
TIMEOUT = 10.0
#: ``--drain-timeout`` of the instances: long enough that the held request never aborts.
DRAIN_SECONDS = 10.0
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
#: The source of the request held open across the drain.
HELD_SOURCE = "127.0.0.6"
HELD_START = b"held "
#: Requests from each source before the load starts.
WARM_UP_PER_SOURCE = 6
#: Replies each instance must have sent under load before the SIGTERM, and the survivor
#: after HAProxy took the other one out.
LOAD_REPLIES = 30
#: A keep-alive client starts a new connection after this many exchanges.
EXCHANGES_PER_CONNECTION = 8
#: Connections tried through HAProxy to land one on the instance that will drain.
HELD_ATTEMPTS = 50
CONFIG_TEMPLATE = Path(__file__).with_name("scale_out_haproxy.cfg")
BACKEND = "echo_instances"
#: The op_state column of ``show servers state``: 0 stopped (DOWN), 2 running.
SRV_RUNNING, SRV_STOPPED = 2, 0

HANDLER_MODULE = """
import os
import sockserve


def reply(handler, line):
    host, port = handler.client_address[:2]
    closing = handler.server.draining  # finish this exchange, then end the connection
    state = "close" if closing else "open"
    return closing, f"{os.getpid()} {host}:{port} {state} ".encode() + line


class Tagged(sockserve.StreamRequestHandler):
    def handle(self):
        if self.proxy.is_local:
            return  # HAProxy's health check
        while line := self.rfile.readline():
            closing, answer = reply(self, line)
            self.wfile.write(answer)
            if closing:
                return


class AsyncTagged(sockserve.AsyncStreamRequestHandler):
    async def handle(self):
        if self.proxy.is_local:
            return
        while line := await self.reader.readline():
            closing, answer = reply(self, line)
            self.writer.write(answer)
            await self.writer.drain()
            if closing:
                return
"""
REPLY = re.compile(
    rb"(?P<pid>\d+) (?P<host>[\d.]+):(?P<port>\d+) (?P<state>open|close) (?P<line>.*\n)"
)

pytestmark = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
)


def render_config(stats_socket: str, frontend: str, server_a: str, server_b: str) -> str:
    template = CONFIG_TEMPLATE.read_text(encoding="ascii")
    return template.format(
        stats_socket=stats_socket, frontend=frontend, server_a=server_a, server_b=server_b
    )


# -- HAProxy ----------------------------------------------------------------------------


class HAProxy:
    """HAProxy in the foreground; its stderr is collected so a test can wait for a line."""

    def __init__(self, binary: str, config: Path, fds: tuple[int, ...], stats: str) -> None:
        checked = subprocess.run(
            [binary, "-c", "-q", "-f", str(config)],
            pass_fds=fds,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self._stats = stats
        self._lines: list[str] = []
        self._grew = threading.Condition()
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._collect, args=(self.process.stderr,))
        self._reader.start()

    def _collect(self, stream: IO[str]) -> None:
        for line in stream:
            with self._grew:
                self._lines.append(line)
                self._grew.notify_all()

    def wait_for_line(self, text: str) -> None:
        with self._grew:
            if not self._grew.wait_for(lambda: any(text in x for x in self._lines), TIMEOUT):
                pytest.fail(f"HAProxy did not log {text!r} in {TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        with self._grew:
            return "".join(self._lines)

    def server_states(self) -> dict[str, int]:
        """Server name → op_state, from ``show servers state`` on the stats socket."""
        with socket.socket(socket.AF_UNIX) as stats:
            stats.settimeout(TIMEOUT)
            stats.connect(self._stats)
            stats.sendall(f"show servers state {BACKEND}\n".encode())
            answer = b"".join(iter(lambda: stats.recv(65536), b"")).decode()
        # A format version line, a "# column ..." header, then one row per server.
        _, header, *rows = (line for line in answer.splitlines() if line.strip())
        columns = header.removeprefix("#").split()
        names, states = columns.index("srv_name"), columns.index("srv_op_state")
        return {row.split()[names]: int(row.split()[states]) for row in rows}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        assert self.process.stderr is not None
        self.process.stderr.close()


@contextlib.contextmanager
def running_haproxy(
    binary: str, tmp_path: Path, short_dir: Path, backends: list[tuple[str, int]]
) -> Iterator[tuple[HAProxy, tuple[str, int]]]:
    """HAProxy on a frontend and a stats socket the test bound; yields it and the frontend."""
    with contextlib.ExitStack() as stack:
        frontend = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        stats_path = str(short_dir / "haproxy.sock")
        stats = stack.enter_context(socket.socket(socket.AF_UNIX))
        stats.bind(stats_path)
        stats.listen()
        (host_a, port_a), (host_b, port_b) = backends
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            render_config(
                f"fd@{stats.fileno()}",
                f"fd@{frontend.fileno()}",
                f"{host_a}:{port_a}",
                f"{host_b}:{port_b}",
            ),
            encoding="ascii",
        )
        haproxy = HAProxy(binary, config, (frontend.fileno(), stats.fileno()), stats_path)
        try:
            yield haproxy, frontend.getsockname()[:2]
        finally:
            haproxy.stop()
            print(haproxy.log())


# -- clients ----------------------------------------------------------------------------


class Tally:
    """Replies per instance pid, and every failure; a test waits on the counts."""

    def __init__(self) -> None:
        self.replies: Counter[int] = Counter()
        self.failures: list[str] = []
        self._changed = threading.Condition()

    def add(self, pid: int) -> None:
        with self._changed:
            self.replies[pid] += 1
            self._changed.notify_all()

    def fail(self, what: str) -> None:
        with self._changed:
            self.failures.append(what)
            self._changed.notify_all()

    def snapshot(self) -> Counter[int]:
        with self._changed:
            return Counter(self.replies)

    def wait_until(self, predicate: Callable[[Counter[int]], bool], what: str) -> None:
        with self._changed:
            done = self._changed.wait_for(
                lambda: bool(self.failures) or predicate(self.replies), TIMEOUT
            )
            assert not self.failures, self.failures
            assert done, f"{what}: not within {TIMEOUT} s (replies {dict(self.replies)})"


@dataclass
class Reply:
    pid: int
    is_closing: bool


def exchange(client: socket.socket, replies: IO[bytes], line: bytes, sent: bytes = b"") -> Reply:
    """Send (the rest of) a line and read the reply; check that it names this client and
    the line (``sent``: its start, sent earlier)."""
    client.sendall(line)
    line = sent + line
    answer = replies.readline()
    match = REPLY.fullmatch(answer)
    assert match, f"no reply to {line!r}: got {answer!r}"
    host, port = client.getsockname()[:2]
    assert (match["host"].decode(), int(match["port"])) == (host, port), answer
    assert match["line"] == line, answer
    return Reply(int(match["pid"]), match["state"] == b"close")


def connect(frontend: tuple[str, int], source: str) -> socket.socket:
    return socket.create_connection(frontend, TIMEOUT, source_address=(source, 0))


def one_exchange(frontend: tuple[str, int], source: str, line: bytes) -> Reply:
    with connect(frontend, source) as client, client.makefile("rb") as replies:
        return exchange(client, replies, line)


class LoadClient(threading.Thread):
    """Requests in a loop until told to stop: one per connection, or keep-alive."""

    def __init__(
        self, frontend: tuple[str, int], source: str, *, keep_alive: bool, tally: Tally
    ) -> None:
        super().__init__(name=f"load-{source}")
        self.frontend, self.source, self.keep_alive, self.tally = (
            frontend,
            source,
            keep_alive,
            tally,
        )
        self.stopping = threading.Event()
        self.requests = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.keep_alive:
                    self._keep_alive_connection()
                else:
                    self.tally.add(one_exchange(self.frontend, self.source, self._line()).pid)
            except (OSError, AssertionError) as exc:
                self.tally.fail(f"{self.name} request {self.requests}: {exc!r}")
                return

    def _line(self) -> bytes:
        self.requests += 1
        return f"{self.source} {self.requests}\n".encode()

    def _keep_alive_connection(self) -> None:
        with connect(self.frontend, self.source) as client, client.makefile("rb") as replies:
            for _ in range(EXCHANGES_PER_CONNECTION):
                reply = exchange(client, replies, self._line())
                self.tally.add(reply.pid)
                if reply.is_closing:
                    # The server said it closes after this reply: it must, cleanly.
                    assert replies.readline() == b"", "a closing reply, then more data"
                    return
                if self.stopping.is_set():
                    return


@contextlib.contextmanager
def load(frontend: tuple[str, int], tally: Tally) -> Iterator[list[LoadClient]]:
    clients = [
        LoadClient(frontend, source, keep_alive=number % 2 == 1, tally=tally)
        for number, source in enumerate(SOURCES)
    ]
    for client in clients:
        client.start()
    try:
        yield clients
    finally:
        for client in clients:
            client.stopping.set()
        for client in clients:
            client.join(TIMEOUT)
        assert not any(client.is_alive() for client in clients), "a load client hung"


def hold_a_request_on(frontend: tuple[str, int], pid: int) -> tuple[socket.socket, IO[bytes]]:
    """A keep-alive connection through HAProxy that landed on ``pid``, mid-exchange."""
    for attempt in range(HELD_ATTEMPTS):
        client = connect(frontend, HELD_SOURCE)
        replies = client.makefile("rb")
        if exchange(client, replies, f"probe {attempt}\n".encode()).pid == pid:
            client.sendall(HELD_START)  # half a line: the handler waits for the rest
            return client, replies
        replies.close()
        client.close()
    pytest.fail(f"no connection reached instance {pid} in {HELD_ATTEMPTS} attempts")


def assert_refuses_connections(address: tuple[str, int]) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, TIMEOUT).close()


# -- the test ---------------------------------------------------------------------------


def instance_args(module: Path, handler: str, mode: str) -> list[str]:
    return [
        *("serve", f"{module}:{handler}", "--host", "127.0.0.1", "--port", "0"),
        *("--mode", mode, "--drain-timeout", str(DRAIN_SECONDS), "--log-level", "info"),
        *("--proxy-protocol", "v2", "--trusted-proxy", "127.0.0.1/32"),
    ]


@contextlib.contextmanager
def instance(args: list[str], tmp_path: Path, name: str) -> Iterator[Command]:
    """One ``sockserve serve``; its stderr is printed at the end (shown if the test fails)."""
    with running(args, tmp_path) as command:
        try:
            yield command
        finally:
            command.kill()
            print(f"-- {name} (pid {command.process.pid}) stderr:\n{command.stderr()}")


@pytest.mark.parametrize(
    ("mode", "handler"), [("threading", "Tagged"), ("pool", "Tagged"), ("async", "AsyncTagged")]
)
def test_one_instance_drains_under_load_and_no_request_fails(
    tmp_path: Path, short_dir: Path, mode: str, handler: str
) -> None:
    binary = haproxy_or_skip()
    module = tmp_path / "tagged.py"
    module.write_text(HANDLER_MODULE, encoding="utf-8")
    args = instance_args(module, handler, mode)
    with (
        instance(args, tmp_path, "victim") as victim,
        instance(args, tmp_path, "survivor") as survivor,
    ):
        victim_address = victim.read_ready_line()[1]
        survivor_address = survivor.read_ready_line()[1]
        pids = {victim.process.pid, survivor.process.pid}
        with running_haproxy(binary, tmp_path, short_dir, [victim_address, survivor_address]) as (
            haproxy,
            frontend,
        ):
            # 1. Both instances serve, and see each client's own address.
            served = Counter(
                one_exchange(frontend, source, f"warm-up {number}\n".encode()).pid
                for number in range(WARM_UP_PER_SOURCE)
                for source in SOURCES
            )
            assert set(served) == pids, served
            assert haproxy.server_states() == {"a": SRV_RUNNING, "b": SRV_RUNNING}

            # 2. SIGTERM one instance under load, with one of its requests mid-exchange.
            tally = Tally()
            with load(frontend, tally):
                tally.wait_until(
                    lambda replies: all(replies[pid] >= LOAD_REPLIES for pid in pids),
                    "both instances serving the load",
                )
                held, held_replies = hold_a_request_on(frontend, victim.process.pid)
                with held, held_replies:
                    before = tally.snapshot()
                    victim.process.send_signal(signal.SIGTERM)
                    assert "stopping: draining" in victim.read_line(TIMEOUT)
                    haproxy.wait_for_line(f"Server {BACKEND}/a is DOWN")
                    at_down = tally.snapshot()
                    assert victim.process.poll() is None  # still draining the held request
                    assert_refuses_connections(victim_address)
                    assert haproxy.server_states() == {"a": SRV_STOPPED, "b": SRV_RUNNING}
                    survivor_pid = survivor.process.pid
                    tally.wait_until(
                        lambda replies: (
                            replies[survivor_pid] >= at_down[survivor_pid] + LOAD_REPLIES
                        ),
                        "the other instance serving on after the drain began",
                    )
                    # The held request completes; the reply says the server closes.
                    reply = exchange(held, held_replies, b"request\n", sent=HELD_START)
                    assert reply == Reply(victim.process.pid, is_closing=True)
                    assert held_replies.readline() == b""
                started = time.monotonic()
                status = victim.process.wait(DRAIN_SECONDS + STOP_GRACE_SECONDS)
                assert status == 0, victim.stderr()
                assert time.monotonic() - started < DRAIN_SECONDS + STOP_GRACE_SECONDS
                after = tally.snapshot()
            summary = victim.remaining_stdout()
            assert re.search(r"stopped \(finished \d+, aborted 0,", summary), summary
            assert "Traceback" not in victim.stderr()
            total = tally.snapshot()
            print(
                f"{mode}: replies before SIGTERM {dict(before)}, at DOWN {dict(at_down)}, "
                f"at exit {dict(after)}, total {dict(total)}; failures {len(tally.failures)}; "
                f"HAProxy logged {haproxy.log().count(' echo_in ')} abnormal session(s)"
            )
            assert tally.failures == []
            assert survivor.stop(signal.SIGTERM) == 0


#: The addresses docs/deployment.md fills in.
DOCUMENTED = {
    "stats_socket": "/run/haproxy/admin.sock",
    "frontend": ":8000",
    "server_a": "127.0.0.1:8001",
    "server_b": "127.0.0.1:8002",
}


def test_the_deployment_doc_shows_the_tested_config() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "deployment.md").read_text(encoding="utf-8")
    shown = render_config(**DOCUMENTED)
    assert f"```text\n{shown}```\n" in doc, "docs/deployment.md: update the HAProxy config"
