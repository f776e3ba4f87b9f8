"""The programs in ``examples/``: each runs, and does what its docstring says.

Most demos run in-process through their ``main()``; the ones that fork or configure
logging for the whole process run as scripts. Every example also runs once as a script
under ``-X dev -W error``, so an unclosed socket or a warning shows up on stderr. The
``--serve`` modes run as subprocesses: the test reads the ``listening on HOST:PORT``
line, talks to the server, sends a signal and expects exit status 0.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from sockserve import TCPServer
from sockserve.proxy_protocol import encode_v1
from sockserve.testing import serve_in_thread

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
LOOPBACK = "127.0.0.1"
#: Seconds any example process, ready line or client socket may take.
DEADLINE = 10.0

ALL_EXAMPLES = [
    "behind_proxy",
    "echo_forking",
    "echo_lifecycle",
    "echo_simple",
    "echo_threaded",
    "reuse_address",
    "socket_options",
    "upper_tcp",
    "upper_udp",
    "worker_pool",
]

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")


# -- helpers ---------------------------------------------------------------------------


@functools.cache
def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (its ``main()`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_command(name: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-X",
        "dev",
        "-W",
        "error",
        str(EXAMPLES_DIR / f"{name}.py"),
        "--host",
        LOOPBACK,
        *args,
    ]


def run_script(name: str, *args: str) -> str:
    """Run the example's demo as a script; return its stdout, after checking it went well."""
    done = subprocess.run(
        script_command(name, "--port", "0", *args),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no traceback, warning or unclosed resource
    return done.stdout


def run_main(name: str, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """Run the example's ``main()`` here; return the lines it printed."""
    assert load_example(name).main(["--host", LOOPBACK, "--port", "0", *args]) == 0
    return capsys.readouterr().out.splitlines()


@contextmanager
def serving(name: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    """Start ``<name> --serve``; yield the process and the address of its ready line.

    Whatever happens in the block, the process is gone afterwards.
    """
    if "--port" not in args:
        args = ("--port", "0", *args)
    proc = subprocess.Popen(
        script_command(name, "--serve", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_first_line(proc)
        if not (match := re.fullmatch(r"listening on (\S+):(\d+)\n", line)):
            proc.kill()
            _, stderr = proc.communicate(timeout=DEADLINE)
            pytest.fail(f"{name}: expected a ready line, got {line!r}; stderr:\n{stderr}")
        yield proc, (match[1], int(match[2]))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=DEADLINE)


def read_first_line(proc: subprocess.Popen[str]) -> str:
    """The first line of the process's stdout, waiting at most ``DEADLINE`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(DEADLINE):
            return f"(nothing within {DEADLINE} s)"
    return proc.stdout.readline()


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal the server; return its exit status and stderr once it has exited."""
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=DEADLINE)
    return proc.returncode, stderr


def tcp_exchange(address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload``, close our side, read until the server closes."""
    with socket.create_connection(address, timeout=DEADLINE) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(7):  # small reads on purpose: no reliance on one recv
            chunks.append(chunk)
    return b"".join(chunks)


def udp_exchange(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(DEADLINE)
        sock.sendto(payload, address)
        return sock.recv(65535)


# -- every example ----------------------------------------------------------------------


def test_the_examples_directory_holds_exactly_the_tested_examples() -> None:
    assert sorted(p.stem for p in EXAMPLES_DIR.glob("*.py")) == ALL_EXAMPLES


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_is_documented_and_uses_sockserve(name: str) -> None:
    tree = ast.parse((EXAMPLES_DIR / f"{name}.py").read_text(encoding="utf-8"))
    assert (ast.get_docstring(tree) or "").strip(), "needs a module docstring"
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "main" in functions
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "sockserve" in imported
    assert "socketserver" not in imported


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_runs_as_a_script_and_exits_cleanly(name: str) -> None:
    assert run_script(name).strip()


# -- what each demo shows ---------------------------------------------------------------


def test_echo_simple_echoes_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_main("echo_simple", capsys, "--message", "Round trip, 1 2 3")
    assert lines == ["sent:     Round trip, 1 2 3", "received: Round trip, 1 2 3"]


def test_echo_simple_handler_echoes_a_message_larger_than_one_recv() -> None:
    example = load_example("echo_simple")
    message = bytes(range(256)) * 256  # 64 KiB: many recv() calls, fits socket buffers
    with serve_in_thread(TCPServer((LOOPBACK, 0), example.EchoHandler)) as server:
        assert example.echo(server.server_address, message) == message
        assert example.echo(server.server_address, b"") == b""


def test_behind_proxy_greets_the_client_the_header_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_main("behind_proxy", capsys) == [
        "hello 203.0.113.7:51000 (PROXY v1, id -): over v1",
        "hello 203.0.113.7:51000 (PROXY v2, id req-42): over v2",
        "''",
        "refused: {'proxy_bad_signature': 1}",
    ]


def test_behind_proxy_serve_mode_takes_headers_from_trusted_proxies_only() -> None:
    header = encode_v1(("192.0.2.5", 4242), ("192.0.2.6", 80))
    with serving("behind_proxy", "--trusted-proxy", "127.0.0.1") as (proc, address):
        reply = tcp_exchange(address, header + b"hi\n")
        assert reply == b"hello 192.0.2.5:4242 (PROXY v1, id -): hi\n"
        status, stderr = stop(proc)
    assert status == 0, stderr
    with serving("behind_proxy", "--trusted-proxy", "192.0.2.0/24") as (proc, address):
        with socket.create_connection(address, timeout=DEADLINE) as sock:
            try:  # refused at accept, before it reads a byte: an end of stream or a reset
                sock.sendall(header + b"hi\n")
                assert sock.recv(64) == b""  # 127.0.0.1 is not trusted
            except (ConnectionResetError, BrokenPipeError):
                pass
        status, stderr = stop(proc)
    assert status == 0, stderr


LIFECYCLE_LINE = re.compile(r"(server|handler): (\w+(?: returned)?)")

REQUEST_HOOKS = [
    "server.get_request",
    "server.verify_request",
    "server.process_request",
    "server.finish_request",
    "handler.__init__",
    "handler.setup",
    "handler.handle",
    "handler.finish",
    "server.shutdown_request",
]


def lifecycle_events(output: str) -> list[str]:
    events = []
    for line in output.splitlines():
        if match := LIFECYCLE_LINE.match(line):
            events.append(f"{match[1]}.{match[2]}")
        elif line.startswith("-- "):
            events.append("round " + line.split()[1].rstrip("."))
        elif line.startswith("client:"):
            events.append("client")
    return events


def assert_in_order(events: list[str], expected: list[str]) -> None:
    """``expected`` occurs in ``events`` in this order (other events may come between)."""
    remaining = iter(events)
    missing = [event for event in expected if event not in remaining]
    assert not missing, f"{missing[0]!r} not found in order in {events}"


def test_echo_lifecycle_logs_every_hook_in_order() -> None:
    output = run_script("echo_lifecycle", "--message", "lifecycle")
    events = lifecycle_events(output)
    round1, round2 = events.index("round 1"), events.index("round 2")

    construction = events[:round1]
    assert construction == ["server.__init__", "server.server_bind", "server.server_activate"]

    first = events[round1:round2]
    assert_in_order(
        first,
        ["server.handle_request", *REQUEST_HOOKS, "server.close_request", "client"],
    )
    assert "server.serve_forever" not in first

    second = events[round2:]
    assert_in_order(second, ["server.serve_forever", *REQUEST_HOOKS, "client"])
    assert_in_order(
        second, ["server.shutdown", "server.serve_forever returned", "server.server_close"]
    )
    assert {"server.close_request", "server.service_actions"} <= set(second)
    assert second[-1] == "server.server_close"

    replies = re.findall(r"client: sent (.*), received (.*)", output)
    assert replies == [("b'lifecycle'", "b'lifecycle'")] * 2


def test_echo_threaded_serves_each_connection_on_its_own_thread(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = run_main("echo_threaded", capsys, "--clients", "3")
    assert lines[0] == f"main thread: {threading.current_thread().name}"
    replies = [re.fullmatch(r"received: (.+): (hello \d)", line) for line in lines[1:]]
    assert all(replies), lines
    assert [m[2] for m in replies if m] == ["hello 1", "hello 2", "hello 3"]
    thread_names = {m[1] for m in replies if m}
    assert len(thread_names) == 3
    assert threading.current_thread().name not in thread_names


@needs_fork
def test_echo_forking_serves_each_connection_in_a_child_process() -> None:
    lines = run_script("echo_forking", "--clients", "3").splitlines()
    server_pid = int(lines[0].removeprefix("server process: "))
    replies = [re.fullmatch(r"received: (\d+): (hello \d)", line) for line in lines[1:]]
    assert all(replies), lines
    assert [m[2] for m in replies if m] == ["hello 1", "hello 2", "hello 3"]
    child_pids = {int(m[1]) for m in replies if m}
    assert len(child_pids) == 3
    assert server_pid not in child_pids
    assert os.getpid() not in child_pids | {server_pid}


def test_upper_tcp_upper_cases_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_main("upper_tcp", capsys, "--message", "one Two thrEE")
    assert lines == [
        "sent: one  received: ONE",
        "sent: Two  received: TWO",
        "sent: thrEE  received: THREE",
    ]


def test_upper_udp_upper_cases_the_datagram(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_main("upper_udp", capsys, "--message", "a datagram, Mixed")
    assert lines == ["sent:     a datagram, Mixed", "received: A DATAGRAM, MIXED"]


def test_worker_pool_serves_concurrent_clients_from_every_worker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = set(threading.enumerate())
    lines = run_main("worker_pool", capsys, "--workers", "3")
    replies = [re.fullmatch(r"received: (worker-\d): (hello \d)", line) for line in lines]
    assert all(replies), lines
    assert [m[2] for m in replies if m] == ["hello 1", "hello 2", "hello 3"]
    assert {m[1] for m in replies if m} == {"worker-1", "worker-2", "worker-3"}
    assert set(threading.enumerate()) <= before  # every worker was stopped and joined


def test_socket_options_sets_the_option_before_binding(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = run_main("socket_options", capsys)
    assert lines == ["SO_REUSEADDR on the listening socket: True", "received: hello"]


def test_socket_options_open_server_binds_and_listens() -> None:
    example = load_example("socket_options")
    with serve_in_thread(example.open_server(LOOPBACK, 0)) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert server.server_address[1] != 0
        assert example.echo_line(server.server_address, "bound") == "bound"
    assert server.socket.fileno() == -1


def test_reuse_address_rebinds_only_with_the_attribute(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain, reusable = run_main("reuse_address", capsys)
    assert re.fullmatch(r"ReusableTCPServer: bound port \d+ again at once", reusable)
    if sys.platform.startswith("linux"):
        # Linux refuses the bind while the server's side of the connection is in
        # TIME_WAIT; other systems may differ, and the demo then says so.
        assert re.fullmatch(r"TCPServer: could not bind port \d+ again: .*in use.*", plain)


# -- --serve modes ----------------------------------------------------------------------

ServeCheck = tuple[Callable[[tuple[str, int], bytes], bytes], bytes]

#: For each example with a --serve mode: how to talk to it, and the reply to b"hello\n".
SERVE_MODES: dict[str, ServeCheck] = {
    "echo_simple": (tcp_exchange, rb"hello\n"),
    "upper_tcp": (tcp_exchange, rb"HELLO\n"),
    "upper_udp": (udp_exchange, rb"HELLO\n"),
    "worker_pool": (tcp_exchange, rb"worker-\d+: hello\n"),
    "socket_options": (tcp_exchange, rb"hello\n"),
    "reuse_address": (tcp_exchange, rb"hello\n"),
}


@pytest.mark.parametrize("name", sorted(SERVE_MODES))
def test_serve_mode_answers_until_sigterm(name: str) -> None:
    exchange, expected = SERVE_MODES[name]
    with serving(name) as (proc, address):
        assert address[0] == LOOPBACK
        for _ in range(2):
            reply = exchange(address, b"hello\n")
            assert re.fullmatch(expected, reply), reply
        status, stderr = stop(proc, signal.SIGTERM)
    assert status == 0, stderr
    assert stderr == ""


def test_serve_mode_stops_on_sigint_too() -> None:
    with serving("echo_simple") as (proc, address):
        assert tcp_exchange(address, b"interrupt me") == b"interrupt me"
        status, stderr = stop(proc, signal.SIGINT)
    assert status == 0, stderr


def test_worker_pool_serve_mode_serves_clients_at_once() -> None:
    with serving("worker_pool", "--workers", "3") as (proc, address), ExitStack() as clients:
        names = []
        for _ in range(3):
            # Each connection stays open, holding its worker: the next needs another one.
            sock = clients.enter_context(socket.create_connection(address, timeout=DEADLINE))
            replies = clients.enter_context(sock.makefile("rb"))
            sock.sendall(b"hi\n")
            names.append(replies.readline().split(b":")[0])
        assert len(set(names)) == 3
        clients.close()
        status, stderr = stop(proc)
    assert status == 0, stderr


def test_reuse_address_serve_mode_restarts_on_the_same_port() -> None:
    with serving("reuse_address") as (proc, address):
        # The server closes first, leaving its side of the connection in TIME_WAIT.
        assert tcp_exchange(address, b"before\n") == b"before\n"
        status, stderr = stop(proc)
    assert status == 0, stderr
    port = str(address[1])
    with serving("reuse_address", "--port", port) as (proc, again):
        assert again == address
        assert tcp_exchange(again, b"after\n") == b"after\n"
        status, stderr = stop(proc)
    assert status == 0, stderr
