"""``sockserve run``: stdlib programs and a program of the tests' own, unchanged, on sockserve.

Each test runs the real command, ``python -m sockserve run ... (-m MODULE | SCRIPT)``,
and learns the port the program bound from what the program itself prints (port 0
everywhere). Thread bounds are observed where the handlers run: each handler reports,
when it starts, how many handlers are running at that moment, and the test holds the
handlers that started until it has seen the bound reached. ``PYTHONUNBUFFERED`` is set
so that a program's ``print`` reaches the pipe at once, as on a terminal.
"""

from __future__ import annotations

import ast
import http.server
import inspect
import re
import selectors
import signal
import socket
import urllib.request
import xmlrpc.client
import xmlrpc.server
from http.client import HTTPConnection
from pathlib import Path

import pytest

import sockserve
from test_cli import (
    STOP_TIMEOUT,
    assert_one_line_error,
    command_env,
    run_to_completion,
    running,
)

#: http.server's line: ``Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ...``
HTTP_SERVING = re.compile(r"Serving HTTP on (?P<host>\S+) port (?P<port>\d+)")
#: The bound the thread-bound test asks for, and the clients it sends (five times as many).
THREADS = 4
CLIENTS = 20

XMLRPC_PROGRAM = """
import xmlrpc.server
from xmlrpc.server import SimpleXMLRPCServer

with SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False) as server:
    server.register_function(lambda a, b: a + b, "add")
    # What xmlrpc.server itself got when it imported socketserver.
    server.register_function(lambda: xmlrpc.server.socketserver.__name__, "server_module")
    print("address", *server.server_address, flush=True)
    server.serve_forever()
print("serve_forever returned", flush=True)
"""

THREADING_PROGRAM = """
import socketserver
import sys
import threading

lock = threading.Lock()
active = 0


class Slow(socketserver.StreamRequestHandler):
    def handle(self):
        global active
        with lock:
            active += 1
            now = active
        self.wfile.write(f"started {now}\\n".encode())
        self.rfile.readline()  # until the client says go
        with lock:
            active -= 1
        self.wfile.write(b"done\\n")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True


with Server(("127.0.0.1", 0), Slow) as server:
    print("address", *server.server_address, "argv", *sys.argv[1:], flush=True)
    server.serve_forever()
print("serve_forever returned", flush=True)
"""


def run_env() -> dict[str, str]:
    return command_env(PYTHONUNBUFFERED="1")


def write_program(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def read_address(line: str) -> tuple[str, int]:
    words = line.split()
    assert words[0] == "address", line
    return words[1], int(words[2])


def socketserver_names_used(module: object) -> set[str]:
    """Every ``socketserver.NAME`` the module's source mentions."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "socketserver"
    }


@pytest.mark.parametrize("module", [http.server, xmlrpc.server], ids=lambda m: m.__name__)
def test_sockserve_has_every_name_the_stdlib_servers_use(module: object) -> None:
    used = socketserver_names_used(module)
    assert used  # the parse found them: TCPServer at least
    assert {name for name in used if not hasattr(sockserve, name)} == set()


def test_http_server_module_serves_files_with_a_thread_pool(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello from sockserve run\n")
    args = ["run", "--mode", "pool", "--threads", "8", "-m", "http.server", "0"]
    args += ["--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with running(args, tmp_path, run_env()) as command:
        match = HTTP_SERVING.search(command.read_line())
        assert match, "http.server did not say where it serves"
        url = f"http://127.0.0.1:{match['port']}/hello.txt"
        with urllib.request.urlopen(url, timeout=STOP_TIMEOUT) as response:
            assert response.read() == b"hello from sockserve run\n"
        assert command.stop(signal.SIGTERM) == 0, command.stderr()
        # The server http.server built was sockserve's: the command drained it.
        assert "draining 1 server(s)" in command.remaining_stdout()
        assert "Traceback" not in command.stderr()


def test_an_xmlrpc_program_of_our_own(tmp_path: Path) -> None:
    program = write_program(tmp_path, "adder.py", XMLRPC_PROGRAM)
    with running(["run", str(program)], tmp_path, run_env()) as command:
        host, port = read_address(command.read_line())
        connection = HTTPConnection(host, port, timeout=STOP_TIMEOUT)
        try:
            body = xmlrpc.client.dumps((2, 3), "add").encode()
            connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
            (result,), _ = xmlrpc.client.loads(connection.getresponse().read())
            assert result == 5
            body = xmlrpc.client.dumps((), "server_module").encode()
            connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
            (module,), _ = xmlrpc.client.loads(connection.getresponse().read())
            assert module == "sockserve"
        finally:
            connection.close()
        assert command.stop(signal.SIGTERM) == 0, command.stderr()
        assert "serve_forever returned" in command.remaining_stdout()


def test_threading_servers_become_a_bounded_pool(tmp_path: Path) -> None:
    """20 clients at once, --threads 4: never more than 4 handlers running, and 4 reached."""
    program = write_program(tmp_path, "slow.py", THREADING_PROGRAM)
    args = ["run", "--mode", "pool", "--threads", str(THREADS), str(program), "one", "--two"]
    with running(args, tmp_path, run_env()) as command:
        line = command.read_line()
        assert line.split("argv")[1].split() == ["one", "--two"]  # the program's own
        address = read_address(line)
        counts = hold_and_release(address)
        assert len(counts) == CLIENTS
        assert max(counts) == THREADS, counts
        assert command.stop(signal.SIGTERM) == 0, command.stderr()


def hold_and_release(address: tuple[str, int]) -> list[int]:
    """Connect ``CLIENTS`` at once; release the oldest started handler only when
    ``THREADS`` are running (all of them at the end). Returns the running count each
    handler saw when it started."""
    clients = [socket.create_connection(address, timeout=STOP_TIMEOUT) for _ in range(CLIENTS)]
    counts: list[int] = []
    held: list[socket.socket] = []
    finished = 0
    with selectors.DefaultSelector() as selector:
        files = {}
        for client in clients:
            files[client] = client.makefile("rb")
            selector.register(client, selectors.EVENT_READ)
        try:
            while finished < CLIENTS:
                ready = selector.select(STOP_TIMEOUT)
                assert ready, f"stalled: {len(counts)} started, {finished} done"
                for key, _ in ready:
                    client = key.fileobj
                    assert isinstance(client, socket.socket)
                    line = files[client].readline()
                    if line.startswith(b"started"):
                        counts.append(int(line.split()[1]))
                        held.append(client)
                    else:
                        assert line == b"done\n", line
                        finished += 1
                        selector.unregister(client)
                # Keep THREADS - 1 handlers running: a bounded server starts one more
                # each time one is released; an unbounded one has started them all.
                while held and (len(held) >= THREADS or len(counts) == CLIENTS):
                    held.pop(0).sendall(b"go\n")
        finally:
            for client in clients:
                files[client].close()
                client.close()
    return counts


def test_sigterm_drains_a_request_in_flight(tmp_path: Path) -> None:
    program = write_program(tmp_path, "slow.py", THREADING_PROGRAM)
    args = ["run", "--mode", "pool", "--threads", "2", "--drain-timeout", "20", str(program)]
    with running(args, tmp_path, run_env()) as command:
        address = read_address(command.read_line())
        with socket.create_connection(address, timeout=STOP_TIMEOUT) as client:
            reader = client.makefile("rb")
            assert reader.readline() == b"started 1\n"
            command.process.send_signal(signal.SIGTERM)
            assert "stopping: draining 1 server(s)" in command.read_line()
            assert command.read_line().startswith("serve_forever returned")
            # Refused now: the listening socket is closed, the request still runs.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=STOP_TIMEOUT).close()
            client.sendall(b"go\n")
            assert reader.readline() == b"done\n"
            reader.close()
        assert command.process.wait(STOP_TIMEOUT) == 0, command.stderr()
        assert "finished 1, aborted 0" in command.remaining_stdout()


def test_max_connections_reaches_the_programs_servers(tmp_path: Path) -> None:
    """With --max-connections 1 the second client waits in the backlog, unserved."""
    program = write_program(tmp_path, "slow.py", THREADING_PROGRAM)
    args = ["run", "--max-connections", "1", str(program)]
    with running(args, tmp_path, run_env()) as command:
        address = read_address(command.read_line())
        with (
            socket.create_connection(address, timeout=STOP_TIMEOUT) as first,
            socket.create_connection(address, timeout=STOP_TIMEOUT) as second,
        ):
            first_reader, second_reader = first.makefile("rb"), second.makefile("rb")
            assert first_reader.readline() == b"started 1\n"
            first.sendall(b"go\n")
            assert first_reader.readline() == b"done\n"
            # Only now is the second served; had it run at once, it would have seen 2.
            assert second_reader.readline() == b"started 1\n"
            second.sendall(b"go\n")
            assert second_reader.readline() == b"done\n"
            first_reader.close()
            second_reader.close()
        assert command.stop(signal.SIGTERM) == 0, command.stderr()


def test_the_programs_exit_status_and_exceptions_are_its_own(tmp_path: Path) -> None:
    exits = write_program(tmp_path, "exits.py", "import sys\nsys.exit(3)\n")
    assert run_to_completion(["run", str(exits)], tmp_path).returncode == 3
    raises = write_program(tmp_path, "raises.py", "raise RuntimeError('boom')\n")
    result = run_to_completion(["run", str(raises)], tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: boom" in result.stderr
    assert "Traceback" in result.stderr  # as python itself reports it


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "-m", "sockserve_no_such_module"], ["sockserve_no_such_module"]),
        (["run", "no_such_script.py"], ["no_such_script.py"]),
        (["run", "--mode", "prefork", "-m", "http.server"], ["--mode prefork", "pool"]),
        (["run", "--threads", "4", "-m", "http.server"], ["--threads", "pool"]),
        (["run"], ["-m MODULE or SCRIPT"]),
        (["run", "--bind", "127.0.0.1:0", "-m", "http.server"], ["--bind"]),
    ],
)
def test_run_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], named: list[str]
) -> None:
    assert_one_line_error(run_to_completion(args, tmp_path), *named)
