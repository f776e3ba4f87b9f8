"""Where sockserve's serve loop must do better than ``socketserver``'s.

Shutdown wakes the loop at once (from another thread, a handler, a signal handler, before
the loop starts, or for a pool of loops); accept errors are classified, logged once and
backed off instead of spinning; handler errors are logged, not printed; thread and child
bookkeeping stays bounded; and the defaults that hurt real traffic are changed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread

#: Every client socket's timeout: generous, it only bounds a failing test.
CLIENT_TIMEOUT = 10.0
#: How long shutdown(), the serving thread and server_close() may take in a passing test.
STOP_TIMEOUT = 5.0

pytestmark = [
    # Python 3.12+ warns that fork() in a process with threads may deadlock the child.
    # The threads are the test's own (serving thread, faulthandler's watchdog) and the
    # children only run a handler. (CPython drops the warning under "error" filters, so
    # this matters for runs with other -W settings.)
    pytest.mark.filterwarnings(
        r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
    ),
]

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads process states from /proc"
)


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def connect(address: Any) -> socket.socket:
    return socket.create_connection(address, timeout=CLIENT_TIMEOUT)


def read_line(sock: socket.socket) -> bytes:
    """One line, read a byte at a time; at end of stream whatever came (b"" if nothing)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(256 * 1024):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(address: Any, line: bytes) -> bytes:
    with connect(address) as client:
        client.sendall(line)
        return read_line(client)


def start_serving(server: Any, poll_interval: float) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
    )
    thread.start()
    return thread


def stop_serving(server: Any, *threads: threading.Thread) -> None:
    """Best-effort stop for a ``finally``: shutdown, join, close, each bounded."""
    if any(thread.is_alive() for thread in threads):
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT)
        for thread in threads:
            thread.join(STOP_TIMEOUT)
    server.server_close()


def shutdown_returns(server: Any) -> bool:
    """Call ``server.shutdown()`` from a helper thread; True if it returned in time."""
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    stopper.join(STOP_TIMEOUT)
    return not stopper.is_alive()


def sockserve_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name.startswith("sockserve") and record.levelno >= level
    ]


# -- shutdown ---------------------------------------------------------------------------


def test_shutdown_wakes_a_loop_with_a_huge_poll_interval() -> None:
    server = sockserve.TCPServer(("127.0.0.1", 0), Echo)
    thread = start_serving(server, poll_interval=60)
    try:
        assert exchange(server.server_address, b"up\n") == b"up\n"
        assert shutdown_returns(server), "shutdown() did not return"
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() waited for its poll interval"
    finally:
        stop_serving(server, thread)


def test_shutdown_from_a_handler_stops_the_loop_after_that_request() -> None:
    served: list[bytes] = []

    class StopOnRequest(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            served.append(line)
            self.server.shutdown()  # on the loop's own thread: must not wait for itself
            self.wfile.write(b"stopping\n")

    server = sockserve.TCPServer(("127.0.0.1", 0), StopOnRequest)
    thread = start_serving(server, poll_interval=60)
    try:
        with connect(server.server_address) as first, connect(server.server_address) as queued:
            queued.sendall(b"queued\n")  # already waiting when the loop is told to stop
            first.sendall(b"stop\n")
            assert read_line(first) == b"stopping\n"  # shutdown() returned in the handler
            thread.join(STOP_TIMEOUT)
            assert not thread.is_alive(), "serve_forever() did not stop"
            assert served == [b"stop\n"]
    finally:
        stop_serving(server, thread)


def test_shutdown_from_a_signal_handler_while_serving_on_the_main_thread() -> None:
    assert threading.current_thread() is threading.main_thread()
    server = sockserve.TCPServer(("127.0.0.1", 0), Echo)
    main_thread = threading.get_ident()
    returned = threading.Event()
    replies: list[bytes] = []
    problems: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        server.shutdown()

    def client_then_signal() -> None:
        try:
            replies.append(exchange(server.server_address, b"first\n"))
        except OSError as exc:
            problems.append(f"client failed: {exc!r}")
        # Aimed at the main thread, so its poll() is interrupted and the handler runs.
        signal.pthread_kill(main_thread, signal.SIGUSR1)
        if not returned.wait(STOP_TIMEOUT):
            problems.append("serve_forever() did not return after the signal")
            # Rescue the main thread: stop the loop the stdlib way, then wake it.
            stdlib_era: Any = server
            stdlib_era._BaseServer__shutdown_request = True
            with connect(server.server_address):
                pass

    previous = signal.signal(signal.SIGUSR1, on_signal)
    helper = threading.Thread(target=client_then_signal, daemon=True)
    try:
        helper.start()
        server.serve_forever(poll_interval=60)
        returned.set()
    finally:
        returned.set()
        helper.join(STOP_TIMEOUT)
        signal.signal(signal.SIGUSR1, previous)
        server.server_close()
    assert problems == []
    assert replies == [b"first\n"]
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_shutdown_before_serve_forever_makes_it_return_at_once() -> None:
    server = sockserve.TCPServer(("127.0.0.1", 0), Echo)
    thread = None
    try:
        assert shutdown_returns(server), "shutdown() without a running loop blocked"
        thread = start_serving(server, poll_interval=60)
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() ignored the earlier shutdown()"
        # That stop request is used up: serving again works as usual.
        with serve_in_thread(server):
            assert exchange(server.server_address, b"again\n") == b"again\n"
    finally:
        if thread is not None:
            stop_serving(server, thread)
        server.server_close()


def test_one_shutdown_stops_every_thread_running_serve_forever() -> None:
    """The "pre-allocated pool" recipe: several threads call serve_forever on one server."""
    loops = 4
    rendezvous = threading.Barrier(loops, timeout=CLIENT_TIMEOUT)

    class Rendezvous(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            rendezvous.wait()  # passes only when every loop holds a request at once
            self.wfile.write(f"{threading.get_ident()}\n".encode())

    server = sockserve.TCPServer(("127.0.0.1", 0), Rendezvous)
    threads = [start_serving(server, poll_interval=60) for _ in range(loops)]
    clients: list[socket.socket] = []
    try:
        for _ in range(loops):
            clients.append(connect(server.server_address))
            clients[-1].sendall(b"hello\n")
        replies = [read_line(client) for client in clients]
        assert all(replies), replies
        assert {int(reply) for reply in replies} == {thread.ident for thread in threads}

        assert shutdown_returns(server), "shutdown() did not return"
        for thread in threads:
            thread.join(STOP_TIMEOUT)
        assert [thread for thread in threads if thread.is_alive()] == []
    finally:
        for client in clients:
            client.close()
        stop_serving(server, *threads)


def test_the_stdlib_private_shutdown_flag_still_stops_the_loop() -> None:
    server = sockserve.TCPServer(("127.0.0.1", 0), Echo)
    thread = start_serving(server, poll_interval=0.05)
    try:
        assert exchange(server.server_address, b"up\n") == b"up\n"
        stdlib_era: Any = server  # code written against socketserver's private names
        stdlib_era._BaseServer__shutdown_request = True
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() ignored _BaseServer__shutdown_request"
        assert stdlib_era._BaseServer__shutdown_request is False  # reset, as in the stdlib
        assert stdlib_era._BaseServer__is_shut_down.is_set()
    finally:
        stop_serving(server, thread)


# -- accept errors ----------------------------------------------------------------------

#: How long the simulated descriptor shortage lasts, from the first failed accept().
EMFILE_EPISODE_SECONDS = 0.5


class DescriptorStarved(sockserve.TCPServer):
    """accept() fails with EMFILE for EMFILE_EPISODE_SECONDS after it first fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_starved = True
        self.failed_calls = 0
        self.first_failure: float | None = None

    def get_request(self) -> Any:
        if self.is_starved:
            now = time.monotonic()
            if self.first_failure is None:
                self.first_failure = now
            if now - self.first_failure < EMFILE_EPISODE_SECONDS:
                self.failed_calls += 1
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            self.is_starved = False
        return super().get_request()


def test_emfile_is_logged_once_backed_off_and_recovered_from(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sockserve")
    with serve_in_thread(DescriptorStarved(("127.0.0.1", 0), Echo)) as server:
        # The client waits in the backlog through the whole episode, then is served.
        assert exchange(server.server_address, b"served\n") == b"served\n"
    host, port = server.server_address

    warnings = sockserve_records(caplog, logging.WARNING)
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    message = warnings[0].getMessage()
    assert os.strerror(errno.EMFILE) in message
    assert f"{host}:{port}" in message
    # Backed off, not spinning: a busy loop would fail accept() many thousand times
    # in the episode; doubling pauses fail it about ten times.
    assert 1 < server.failed_calls < 50
    assert server.stats().accept_errors == server.failed_calls


def test_econnaborted_is_retried_silently(caplog: pytest.LogCaptureFixture) -> None:
    class Aborting(sockserve.TCPServer):
        aborts_left = 3

        def get_request(self) -> Any:
            if self.aborts_left:
                self.aborts_left -= 1
                raise OSError(errno.ECONNABORTED, os.strerror(errno.ECONNABORTED))
            return super().get_request()

    caplog.set_level(logging.INFO, logger="sockserve")
    with serve_in_thread(Aborting(("127.0.0.1", 0), Echo)) as server:
        assert exchange(server.server_address, b"served\n") == b"served\n"
        assert exchange(server.server_address, b"again\n") == b"again\n"
    assert server.aborts_left == 0
    assert sockserve_records(caplog, logging.INFO) == []
    assert server.stats().accept_errors == 0


REAL_EMFILE_SCRIPT = r"""
import json, logging, os, resource, socket, threading
import sockserve
from sockserve.testing import serve_in_thread

class Echo(sockserve.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())

class Watch(logging.Handler):
    def __init__(self):
        super().__init__()
        self.warned = threading.Event()
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        if record.levelno >= logging.WARNING:
            self.warned.set()

class WarmUpServer(sockserve.TCPServer):
    def __init__(self, *args):
        super().__init__(*args)
        self.closed_a_request = threading.Event()

    def close_request(self, request):
        super().close_request(request)
        self.closed_a_request.set()

def read_line(sock):
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line.decode()

watch = Watch()
logging.getLogger("sockserve").addHandler(watch)
logging.getLogger("sockserve").setLevel(logging.INFO)
result = {}
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
low = 128 if soft == resource.RLIM_INFINITY or soft > 128 else soft
server = WarmUpServer(("127.0.0.1", 0), Echo)
with serve_in_thread(server, poll_interval=0.1):
    # One request first: the loop then runs and holds every descriptor it needs, and
    # once the server closed its end no descriptor frees up behind our back.
    with socket.create_connection(server.server_address, timeout=10) as warm_up:
        warm_up.sendall(b"warm-up\n")
        result["warm_up"] = read_line(warm_up)
    result["warm_up_closed"] = server.closed_a_request.wait(10)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(10)
    spare = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        while len(spare) < 10_000:
            spare.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        result["fill_errno"] = exc.errno
    # connect() needs no new descriptor; the server's accept() does, and cannot have one.
    client.connect(server.server_address)
    client.sendall(b"ping\n")
    result["warned"] = watch.warned.wait(10)
    for fd in spare:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    result["reply"] = read_line(client)
    result["accept_errors"] = server.stats().accept_errors
    client.close()
result["messages"] = watch.messages
print(json.dumps(result))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_NOFILE")
def test_real_emfile_recovers_once_descriptors_free_up() -> None:
    """In a subprocess, so that exhausting descriptors cannot disturb pytest."""
    completed = subprocess.run(
        [sys.executable, "-c", REAL_EMFILE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["warm_up"] == "warm-up\n"
    assert result["warm_up_closed"]
    assert result["fill_errno"] == errno.EMFILE
    assert result["warned"], result["messages"]
    assert result["reply"] == "ping\n", result
    assert 1 <= result["accept_errors"] < 50, result
    warnings = [m for m in result["messages"] if m.startswith(("WARNING", "ERROR"))]
    assert len(warnings) == 1, result["messages"]
    assert os.strerror(errno.EMFILE) in warnings[0]


# -- handler errors ---------------------------------------------------------------------


def test_handler_error_is_logged_with_client_address_and_traceback(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    class Failing(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            raise ValueError("the handler failed")

    with (
        serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), Failing)) as server,
        connect(server.server_address) as client,
    ):
        host, port = client.getsockname()
        client.sendall(b"fail\n")
        assert read_line(client) == b""  # the request was closed after the error

    errors = sockserve_records(caplog, logging.ERROR)
    assert len(errors) == 1
    assert f"{host}:{port}" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError
    assert 'raise ValueError("the handler failed")' in caplog.text  # the traceback
    out, err = capfd.readouterr()
    assert "the handler failed" not in out + err
    assert "Exception occurred during processing" not in out + err


@pytest.mark.parametrize(
    "server_class",
    [
        sockserve.TCPServer,
        sockserve.ThreadingTCPServer,
        pytest.param(getattr(sockserve, "ForkingTCPServer", None), marks=needs_fork),
    ],
    ids=["TCPServer", "ThreadingTCPServer", "ForkingTCPServer"],
)
def test_handle_error_that_raises_still_closes_the_request(
    server_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class FailOnBoom(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"boom\n":
                raise ValueError("boom")
            self.wfile.write(line)

    class BrokenErrorHandling(server_class):  # type: ignore[misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            raise RuntimeError("handle_error is broken too")

    with serve_in_thread(BrokenErrorHandling(("127.0.0.1", 0), FailOnBoom)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"boom\n")
            assert read_line(client) == b""  # closed: end of stream
        for i in range(3):
            line = f"next {i}\n".encode()
            assert exchange(server.server_address, line) == line
    if server_class is not getattr(sockserve, "ForkingTCPServer", None):
        # (A forked child logs in its own process.)
        errors = sockserve_records(caplog, logging.ERROR)
        assert [record.exc_info[0] for record in errors if record.exc_info] == [RuntimeError]


# -- bookkeeping of threads and children ------------------------------------------------


def test_threading_bookkeeping_stays_bounded() -> None:
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)) as server:
        for i in range(200):
            line = f"{i}\n".encode()
            assert exchange(server.server_address, line) == line
        assert len(server._threads) < 10
        server._threads.join()
        assert len(server._threads) == 0


class ReplyPid(sockserve.StreamRequestHandler):
    """Replies with the serving process's pid (``WaitForBye`` then waits for a line)."""

    waits_for_bye = False

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(f"{os.getpid()}\n".encode())
        if self.waits_for_bye:
            # Wait for a line, not for end of stream: the test process's client sockets
            # are inherited by every forked child, so closing one sends no EOF.
            self.rfile.readline()


class WaitForBye(ReplyPid):
    waits_for_bye = True


def zombie_children() -> set[int]:
    """Pids of this process's children that exited and were not reaped."""
    me, zombies = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        state, parent = fields[0], int(fields[1])
        if parent == me and state == "Z":
            zombies.add(int(entry))
    return zombies


@needs_fork
@needs_proc
def test_forking_reaps_children_so_no_zombies_remain() -> None:
    class Watched(sockserve.ForkingTCPServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.none_active = threading.Event()

        def service_actions(self) -> None:
            super().service_actions()
            if not self.active_children:
                self.none_active.set()

    with serve_in_thread(Watched(("127.0.0.1", 0), ReplyPid), poll_interval=0.05) as server:
        pids = [int(exchange(server.server_address, b"pid?\n")) for _ in range(8)]
        server.none_active.clear()
        assert server.none_active.wait(CLIENT_TIMEOUT), "service_actions() never reaped"
        assert zombie_children() & set(pids) == set()
        for pid in pids:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped by the server already
    assert len(set(pids)) == 8
    assert os.getpid() not in pids


def bounded_forking_server(max_children: int) -> Any:
    """A ForkingTCPServer serving WaitForBye that records the most children alive."""

    class BoundedForking(sockserve.ForkingTCPServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.most_children = 0

        def process_request(self, request: Any, client_address: Any) -> None:
            super().process_request(request, client_address)
            self.most_children = max(self.most_children, len(self.active_children or ()))

    BoundedForking.max_children = max_children
    return BoundedForking(("127.0.0.1", 0), WaitForBye)


def release(clients: list[socket.socket]) -> None:
    """Send ``bye`` to each client's child, which then exits."""
    for client in clients:
        try:
            client.sendall(b"bye\n")
        except OSError:
            pass  # that child is gone already


@needs_fork
def test_forking_keeps_active_children_within_max_children() -> None:
    server = bounded_forking_server(max_children=2)
    clients: list[socket.socket] = []
    try:
        with serve_in_thread(server, poll_interval=0.05):
            try:
                for _ in range(6):
                    clients.append(connect(server.server_address))
                    clients[-1].sendall(b"pid?\n")
                pids = []
                for i in range(0, 6, 2):  # two at a time: the others wait to be forked
                    pair = clients[i : i + 2]
                    pids += [int(read_line(client)) for client in pair]
                    release(pair)
            finally:
                release(clients)  # so that a failing test can still stop the server
        assert len(set(pids)) == 6
        assert server.most_children == 2
        assert not server.active_children
    finally:
        for client in clients:
            client.close()
        server.server_close()


@needs_fork
def test_forking_at_max_children_serves_the_next_client_when_any_child_exits() -> None:
    """A slot freed by any child is used at once, not only one freed by the oldest."""
    server = bounded_forking_server(max_children=3)
    clients: list[socket.socket] = []
    try:
        with serve_in_thread(server, poll_interval=0.05):
            try:
                for _ in range(3):
                    clients.append(connect(server.server_address))
                    clients[-1].sendall(b"pid?\n")
                    assert read_line(clients[-1])
                for _ in range(3):
                    waiting = connect(server.server_address)
                    clients.append(waiting)
                    waiting.sendall(b"pid?\n")  # no free slot: waits for a child to exit
                    release([clients[-2]])  # the youngest child ends, the oldest go on
                    assert read_line(waiting), "the freed slot was not used"
            finally:
                release(clients)  # so that a failing test can still stop the server
        assert server.most_children <= 3
    finally:
        for client in clients:
            client.close()
        server.server_close()


# -- TCP_NODELAY ------------------------------------------------------------------------


class NoDelayProbe(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        value = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.wfile.write(f"{value}\n".encode())


def test_stream_handler_sets_tcp_nodelay_by_default() -> None:
    with serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), NoDelayProbe)) as server:
        assert exchange(server.server_address, b"?\n") not in (b"", b"0\n")


def test_disable_nagle_algorithm_false_keeps_nagle() -> None:
    class KeepsNagle(NoDelayProbe):
        disable_nagle_algorithm = False

    with serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), KeepsNagle)) as server:
        assert exchange(server.server_address, b"?\n") == b"0\n"


@needs_unix
def test_tcp_nodelay_is_not_applied_to_unix_stream_sockets(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path_factory.mktemp("u") / "s")
    with (
        serve_in_thread(sockserve.UnixStreamServer(path, Echo)) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
    ):
        client.settimeout(CLIENT_TIMEOUT)
        client.connect(server.server_address)
        client.sendall(b"unix\n")
        assert read_line(client) == b"unix\n"
    assert sockserve_records(caplog, logging.ERROR) == []


# -- defaults and datagrams -------------------------------------------------------------


def test_defaults_fit_real_traffic() -> None:
    assert sockserve.TCPServer.request_queue_size == socket.SOMAXCONN
    assert sockserve.ThreadingTCPServer.request_queue_size == socket.SOMAXCONN
    assert sockserve.UDPServer.max_packet_size == 65535
    assert sockserve.ThreadingUDPServer.max_packet_size == 65535


class ReplyLength(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(str(len(self.packet)).encode())


def test_a_large_datagram_arrives_whole() -> None:
    size = 60_000  # above the stdlib's 8192, below the 65,507-byte IPv4 UDP maximum
    with (
        serve_in_thread(sockserve.UDPServer(("127.0.0.1", 0), ReplyLength)) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(CLIENT_TIMEOUT)
        client.sendto(b"x" * size, server.server_address)
        assert client.recv(100) == str(size).encode()


@pytest.fixture
def datagram_endpoints(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Any]:
    """``(server_address, client_address)`` for the server class under test."""
    if request.node.callspec.params["transport"] == "udp":
        return ("127.0.0.1", 0), ("127.0.0.1", 0)
    directory = tmp_path_factory.mktemp("u")
    return str(directory / "s"), str(directory / "c")


@pytest.mark.parametrize("transport", ["udp", pytest.param("unix_datagram", marks=needs_unix)])
def test_a_datagram_over_max_packet_size_is_logged_and_dropped(
    transport: str, datagram_endpoints: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    packets: list[bytes] = []

    class Recording(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            packets.append(self.packet)
            self.wfile.write(self.packet)

    base: Any = sockserve.UDPServer if transport == "udp" else sockserve.UnixDatagramServer

    class SmallPackets(base):  # type: ignore[misc]
        max_packet_size = 64

    server_address, client_address = datagram_endpoints
    family = socket.AF_INET if transport == "udp" else socket.AF_UNIX
    with (
        serve_in_thread(SmallPackets(server_address, Recording)) as server,
        socket.socket(family, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(CLIENT_TIMEOUT)
        client.bind(client_address)
        client.sendto(b"x" * 1000, server.server_address)
        client.sendto(b"small", server.server_address)
        assert client.recv(2000) == b"small"  # the first reply is to the second datagram
        sender = client.getsockname()
    assert packets == [b"small"]
    warnings = sockserve_records(caplog, logging.WARNING)
    assert len(warnings) == 1
    shown = f"{sender[0]}:{sender[1]}" if transport == "udp" else sender
    assert shown in warnings[0].getMessage()
    assert "max_packet_size" in warnings[0].getMessage()


# -- unbuffered writes ------------------------------------------------------------------


def test_unbuffered_wfile_write_sends_everything() -> None:
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB, more than any buffer
    written: list[int] = []

    class Big(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            written.append(self.wfile.write(payload))

    with (
        serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), Big)) as server,
        connect(server.server_address) as client,
    ):
        client.sendall(b"go\n")
        received = read_to_eof(client)
    assert len(received) == len(payload)
    assert received == payload
    assert written == [len(payload)]


# -- test helpers for users -------------------------------------------------------------


def test_serve_in_thread_starts_and_stops_the_server() -> None:
    before = set(threading.enumerate())
    with serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), Echo)) as server:
        started = set(threading.enumerate()) - before
        assert started, "no serving thread"
        assert exchange(server.server_address, b"in\n") == b"in\n"
    assert server.fileno() == -1
    assert [thread for thread in started if thread.is_alive()] == []


@pytest.fixture
def checked_after_teardown() -> Iterator[list[Any]]:
    """Servers to check once every fixture requested after this one has been torn down."""
    before = set(threading.enumerate())
    servers: list[Any] = []
    yield servers
    for server in servers:
        assert server.fileno() == -1, f"{server!r} was not closed"
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == [], "serving threads outlived the test"


def test_sockserve_serve_fixture_starts_and_stops_servers(
    checked_after_teardown: list[Any], sockserve_serve: Any
) -> None:
    tcp = sockserve_serve(sockserve.TCPServer(("127.0.0.1", 0), Echo))
    udp = sockserve_serve(sockserve.UDPServer(("127.0.0.1", 0), ReplyLength), poll_interval=0.1)
    checked_after_teardown.extend([tcp, udp])
    assert exchange(tcp.server_address, b"tcp\n") == b"tcp\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        client.sendto(b"four", udp.server_address)
        assert client.recv(100) == b"4"
