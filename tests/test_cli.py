"""The ``sockserve`` command, run as a user runs it: a separate process.

It prints one ready line naming the address it bound, serves until SIGTERM or SIGINT and
then exits 0; a mistake the user can fix (a port in use, a host that does not resolve, a
handler that cannot be found) is one line on stderr, ``sockserve: error: ...``, and exit
status 2, never a traceback.

Each test starts ``sys.executable -m sockserve`` in a temporary directory, reads its
output with a deadline on reader threads (no polling), and kills it in a ``finally``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

import sockserve
from loopback import has_ipv6_loopback
from sockserve.cli.serving import STOP_GRACE_SECONDS
from sockserve.demo import CHARGEN_MAX_BYTES
from unix_paths import short_directory

#: How long the command may take to start and print its ready line (a loaded CI machine
#: can take seconds to start Python); it only bounds a failing test.
START_TIMEOUT = 30.0
#: How long it may take to exit after a signal, and the timeout of every client socket.
STOP_TIMEOUT = 10.0
#: Exit status for a mistake on the command line or in the environment.
EXIT_USAGE = 2
#: A host under the reserved ``.invalid`` TLD (RFC 6761): it never resolves.
UNRESOLVABLE_HOST = "sockserve-test.invalid"
#: The ready line: ``sockserve 0.1.0: serving EchoHandler on 127.0.0.1:9999 (threading); ...``
READY_LINE = re.compile(
    r"serving (?P<handler>\S+) on (?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+) \((?P<mode>\w+)\)"
)
#: The ready line's list of addresses, however many binds there are.
READY_ADDRESSES = re.compile(r"serving \S+ on (?P<addresses>.+) \(\w+\); ")
#: The package source, for subprocesses when the tests run from a checkout (PYTHONPATH=src
#: is relative to where pytest started, and the commands run in a temporary directory).
SRC = Path(__file__).resolve().parent.parent / "src"
#: Processes started at once to catch a signal sent the moment the ready line appears.
SIGNAL_RACERS = 24

MODES = ["threading", "pool", "sync", "async"] + (
    ["forking", "prefork"] if hasattr(os, "fork") else []
)

HANDLER_MODULE = """
import os

import sockserve

NOT_A_HANDLER = 42


class Upper(sockserve.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


class AsyncUpper(sockserve.AsyncStreamRequestHandler):
    async def handle(self):
        async for line in self.reader:
            self.writer.write(line.upper())
            await self.writer.drain()


class DatagramUpper(sockserve.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read().upper())


class WhoAmI(sockserve.StreamRequestHandler):
    def handle(self):
        self.wfile.write(str(os.geteuid()).encode())


class NoHandle:
    pass


def make_server(address, bind_and_activate=True):
    return sockserve.ThreadingTCPServer(address, Upper, bind_and_activate)
"""


class Command:
    """A running ``python -m sockserve``; its output is read line by line by threads."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        *,
        signal_when_ready: int | None = None,
        pass_fds: tuple[int, ...] = (),
        launcher: tuple[str, ...] = (),
    ) -> None:
        self.args = args
        self._signal_when_ready = signal_when_ready
        self.process = subprocess.Popen(
            [*launcher, sys.executable, "-m", "sockserve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
            cwd=cwd,
            env=command_env() if env is None else env,
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._stderr_grew = threading.Condition()
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_lines, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._collect, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            if self._signal_when_ready is not None:
                # From the reader thread, the moment the first line arrives.
                self.process.send_signal(self._signal_when_ready)
                self._signal_when_ready = None
            self._stdout.put(line)
        self._stdout.put(None)

    def _collect(self, stream: IO[str]) -> None:
        for line in stream:
            with self._stderr_grew:
                self._stderr.append(line)
                self._stderr_grew.notify_all()

    def wait_for_stderr(self, text: str, timeout: float = STOP_TIMEOUT) -> None:
        """Wait until a line containing ``text`` reaches stderr; fail the test if none does."""
        with self._stderr_grew:
            if not self._stderr_grew.wait_for(
                lambda: any(text in line for line in self._stderr), timeout
            ):
                pytest.fail(f"{text!r} did not appear on stderr in {timeout} s")

    def read_line(self, timeout: float = START_TIMEOUT) -> str:
        """The next stdout line; fails the test if none comes in time or stdout ends."""
        try:
            line = self._stdout.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"sockserve {' '.join(self.args)} printed nothing in {timeout} s")
        if line is None:
            self.process.wait(STOP_TIMEOUT)
            pytest.fail(
                f"sockserve {' '.join(self.args)} closed stdout (exit status "
                f"{self.process.returncode}); stderr:\n{self.stderr()}"
            )
        return line

    def read_ready_line(self) -> tuple[re.Match[str], tuple[str, int]]:
        line = self.read_line()
        match = READY_LINE.search(line)
        assert match, f"not a ready line: {line!r}"
        return match, (match["host"].strip("[]"), int(match["port"]))

    def read_bound_addresses(self) -> list[str]:
        """Every address the ready line lists, as printed (``127.0.0.1:5``, ``unix:/p``)."""
        line = self.read_line()
        match = READY_ADDRESSES.search(line)
        assert match, f"not a ready line: {line!r}"
        return match["addresses"].split(", ")

    def remaining_stdout(self) -> str:
        """Everything printed after the lines already read (call once the process ended)."""
        self._readers[0].join(STOP_TIMEOUT)
        lines = []
        while (line := self._stdout.get_nowait()) is not None:
            lines.append(line)
        return "".join(lines)

    def stderr(self) -> str:
        self._readers[1].join(STOP_TIMEOUT)
        return "".join(self._stderr)

    def stop(self, signum: int) -> int:
        """Send ``signum``; the exit status."""
        self.process.send_signal(signum)
        return self.process.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)
        for reader in self._readers:
            reader.join(STOP_TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def running(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    *,
    pass_fds: tuple[int, ...] = (),
    launcher: tuple[str, ...] = (),
) -> Iterator[Command]:
    """``launcher``: a program that execs the command (its argv follows)."""
    command = Command(args, cwd, env, pass_fds=pass_fds, launcher=launcher)
    try:
        yield command
    finally:
        command.kill()


def run_to_completion(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command that should fail at once (``subprocess.run`` kills it on timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "sockserve", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=command_env() if env is None else env,
        timeout=START_TIMEOUT,
        check=False,
    )


def command_env(*paths: Path, **variables: str) -> dict[str, str]:
    """This environment, with ``paths`` and ``src`` first on PYTHONPATH, plus ``variables``."""
    env = dict(os.environ)
    search = [*map(str, paths), str(SRC), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, search))
    env.update(variables)
    return env


def user_module_env(tmp_path: Path) -> dict[str, str]:
    """Write the user's handler module where only ``PYTHONPATH`` can find it.

    Not in the working directory: ``python -m`` puts that on ``sys.path`` by itself.
    """
    directory = tmp_path / "userlib"
    directory.mkdir()
    (directory / "ss_cli_upper.py").write_text(HANDLER_MODULE, encoding="utf-8")
    return command_env(directory)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 2, stderr exactly one ``sockserve: error:`` line naming each of ``names``."""
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    line = lines[0]
    assert line.startswith("sockserve: error:"), line
    for name in names:
        assert name in line, f"{name!r} not named in {line!r}"
    assert "serving" not in result.stdout  # it never got as far as serving
    return line


def echo(address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload`` on one thread, read to end of stream on this one."""
    with socket.create_connection(address, timeout=STOP_TIMEOUT) as client:
        failures: list[BaseException] = []

        def send() -> None:
            try:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported below
                failures.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        sender.join(STOP_TIMEOUT)
        assert not failures, failures
        return b"".join(chunks)


# -- serving -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_demo_echo_prints_its_address_echoes_and_stops_on_sigterm(
    tmp_path: Path, mode: str
) -> None:
    args = ["demo", "echo", "--port", "0", "--mode", mode]
    args += ["--workers", "2"] if mode == "prefork" else []
    args += ["--threads", "4"] if mode in ("pool", "prefork") else []
    with running(args, tmp_path) as command:
        match, address = command.read_ready_line()
        assert match["handler"] == ("AsyncEchoHandler" if mode == "async" else "EchoHandler")
        assert match["mode"] == mode
        assert address[0] == "127.0.0.1"
        assert address[1] != 0
        payload = b"hello, echo\n" + bytes(range(256)) * 256
        assert echo(address, payload) == payload
        assert echo(address, b"second client") == b"second client"
        assert command.stop(signal.SIGTERM) == 0
        assert "sockserve: stopped" in command.remaining_stdout()
        assert "Traceback" not in command.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_serving_exits_zero(tmp_path: Path, signum: int) -> None:
    with running(["demo", "echo", "--port", "0"], tmp_path) as command:
        _, address = command.read_ready_line()
        assert echo(address, b"ping") == b"ping"  # the loop is running
        assert command.stop(signum) == 0
        assert "Traceback" not in command.stderr()
        assert "KeyboardInterrupt" not in command.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_as_soon_as_the_ready_line_appears_exits_zero(tmp_path: Path, signum: int) -> None:
    """A supervisor may stop the server the moment it says it is ready.

    The window between the ready line and the signal handlers being in place (if there is
    one) is narrow, so several processes are started at once and each is signalled by its
    stdout reader the moment its ready line arrives.
    """
    commands = []
    try:
        for _ in range(SIGNAL_RACERS):
            commands.append(
                Command(["demo", "echo", "--port", "0"], tmp_path, signal_when_ready=signum)
            )
        for command in commands:
            command.read_ready_line()
        failures = []
        for command in commands:
            status = command.process.wait(STOP_TIMEOUT)
            stderr = command.stderr()
            if status != 0 or "Traceback" in stderr:
                last = stderr.strip().splitlines()[-1:] or ["(nothing on stderr)"]
                failures.append(f"exit status {status}, stderr ends: {last[0]}")
        assert not failures, (
            f"{len(failures)} of {SIGNAL_RACERS} processes signalled right after their ready "
            "line did not stop cleanly:\n  " + "\n  ".join(failures)
        )
    finally:
        for command in commands:
            command.kill()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (cannot bind ::1)")
def test_demo_echo_on_ipv6_loopback(tmp_path: Path) -> None:
    with running(["demo", "echo", "--host", "::1", "--port", "0"], tmp_path) as command:
        match, address = command.read_ready_line()
        assert match["host"].startswith("[")  # [::1]:port, so the port reads unambiguously
        assert address[0] == "::1"
        assert echo(address, b"over IPv6") == b"over IPv6"
        assert command.stop(signal.SIGTERM) == 0


def test_serve_a_handler_from_a_user_module(tmp_path: Path) -> None:
    args = ["serve", "ss_cli_upper:Upper", "--port", "0", "--mode", "sync"]
    with running(args, tmp_path, user_module_env(tmp_path)) as command:
        match, address = command.read_ready_line()
        assert match["handler"] == "Upper"
        assert address[0] == "127.0.0.1"
        assert echo(address, b"hello\nworld\n") == b"HELLO\nWORLD\n"
        assert command.stop(signal.SIGTERM) == 0
        assert "Traceback" not in command.stderr()


def test_an_async_handler_is_served_in_async_mode_by_default(tmp_path: Path) -> None:
    args = ["serve", "ss_cli_upper:AsyncUpper", "--port", "0"]
    with running(args, tmp_path, user_module_env(tmp_path)) as command:
        match, address = command.read_ready_line()
        assert (match["handler"], match["mode"]) == ("AsyncUpper", "async")
        assert echo(address, b"hello\nworld\n") == b"HELLO\nWORLD\n"
        assert command.stop(signal.SIGTERM) == 0
        assert "Traceback" not in command.stderr()


def test_version(tmp_path: Path) -> None:
    result = run_to_completion(["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sockserve {sockserve.__version__}"


def test_version_of_the_installed_script(tmp_path: Path) -> None:
    script = Path(sysconfig.get_path("scripts")) / "sockserve"
    if not script.exists():
        pytest.skip(f"the console script is not installed for this Python ({script})")
    result = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sockserve {sockserve.__version__}"


# -- stopping: a drain with a deadline, never a hang ----------------------------------

#: ``--drain-timeout`` for the stopping tests: short, so they stay quick.
DRAIN_SECONDS = 2.0


class BusyClient:
    """A client that keeps sending (and, if the server echoes, reading) until it fails."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.socket = socket.create_connection(address, timeout=STOP_TIMEOUT)
        self.socket.sendall(b"busy\n")
        assert self.socket.recv(64), "the busy client got no echo"  # it is in flight now
        self._thread = threading.Thread(target=self._keep_busy, daemon=True)
        self._thread.start()

    def _keep_busy(self) -> None:
        try:
            while True:
                self.socket.sendall(b"x" * 1024)
                if not self.socket.recv(65536):
                    return
        except OSError:
            return  # reset, closed or timed out: the server has let go of us

    def close(self) -> None:
        self.socket.close()
        self._thread.join(STOP_TIMEOUT)


def assert_closed_by_server(client: socket.socket) -> None:
    """The server closed ``client``: a read gives end of stream or a reset, not a timeout."""
    try:
        assert client.recv(64) == b""
    except ConnectionResetError:
        pass


def stop_args(mode: str, drain_seconds: float) -> list[str]:
    return [
        *("demo", "echo", "--port", "0", "--mode", mode),
        *("--drain-timeout", str(drain_seconds)),
        *(["--workers", "1"] if mode == "prefork" else []),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_drains_within_the_deadline_with_idle_and_busy_clients(
    tmp_path: Path, mode: str
) -> None:
    with running(stop_args(mode, DRAIN_SECONDS), tmp_path) as command:
        _, address = command.read_ready_line()
        busy = BusyClient(address)
        idle = socket.create_connection(address, timeout=STOP_TIMEOUT)
        try:
            command.process.send_signal(signal.SIGTERM)
            status = command.process.wait(DRAIN_SECONDS + STOP_GRACE_SECONDS)
            assert status == 0, command.stderr()
            assert_closed_by_server(idle)
        finally:
            idle.close()
            busy.close()
        output = command.remaining_stdout()
        assert "sockserve: stopped" in output
        if mode != "prefork":  # the master logs each worker's drain instead
            assert "aborted" in output
        assert "Traceback" not in command.stderr()


@pytest.mark.parametrize("mode", MODES)
def test_a_second_signal_stops_at_once(tmp_path: Path, mode: str) -> None:
    """TERM, then (once it is being handled) INT: the process is gone at once, status 0.

    The second signal is sent only once the first one shows: Python runs the handlers of
    signals pending together in signal-number order, so INT would come first.
    """
    long_drain = 60.0
    with running([*stop_args(mode, long_drain), "-v"], tmp_path) as command:
        _, address = command.read_ready_line()
        busy = BusyClient(address)  # also proves a pre-fork master is supervising
        try:
            command.process.send_signal(signal.SIGTERM)
            if mode == "prefork":  # the master handles TERM and logs it
                command.wait_for_stderr("graceful stop")
            else:
                assert "stopping: draining" in command.read_line(STOP_TIMEOUT)
            command.process.send_signal(signal.SIGINT)
            assert command.process.wait(STOP_GRACE_SECONDS) == 0, command.stderr()
        finally:
            busy.close()
        assert "Traceback" not in command.stderr()


# -- mistakes: one line, exit status 2 ---------------------------------------------------


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_port_in_use(tmp_path: Path, port_in_use: int) -> None:
    result = run_to_completion(["demo", "echo", "--port", str(port_in_use)], tmp_path)
    line = assert_one_line_error(result, f"127.0.0.1:{port_in_use}")
    assert "in use" in line


def test_host_that_does_not_resolve(tmp_path: Path) -> None:
    result = run_to_completion(
        ["demo", "echo", "--host", UNRESOLVABLE_HOST, "--port", "0"], tmp_path
    )
    line = assert_one_line_error(result, UNRESOLVABLE_HOST)
    assert "resolve" in line


def test_port_out_of_range(tmp_path: Path) -> None:
    result = run_to_completion(["demo", "echo", "--port", "70000"], tmp_path)
    line = assert_one_line_error(result, "--port", "70000")
    assert "0-65535" in line  # refused as an option value, before any bind


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("sockserve_no_such_module:Handler", ["sockserve_no_such_module"]),
        ("ss_cli_upper:NoSuchHandler", ["ss_cli_upper", "NoSuchHandler"]),
        ("ss_cli_upper", ["ss_cli_upper", "MODULE:NAME"]),
        (":Upper", [":Upper", "MODULE:NAME"]),
        ("ss_cli_upper:", ["ss_cli_upper:", "MODULE:NAME"]),
        ("ss_cli_upper:NOT_A_HANDLER", ["RequestHandlerClass", "42"]),
    ],
    ids=[
        "missing-module",
        "missing-attribute",
        "no-colon",
        "no-module",
        "no-attribute",
        "not-a-handler",
    ],
)
def test_serve_target_that_cannot_work(tmp_path: Path, target: str, named: list[str]) -> None:
    env = user_module_env(tmp_path)
    result = run_to_completion(["serve", target, "--port", "0"], tmp_path, env)
    assert_one_line_error(result, *named)


@pytest.mark.parametrize(
    ("target", "mode", "named"),
    [
        ("ss_cli_upper:AsyncUpper", "threading", ["AsyncUpper", "--mode async"]),
        ("ss_cli_upper:Upper", "async", ["Upper", "--mode async"]),
    ],
    ids=["async-handler-in-threading-mode", "sync-handler-in-async-mode"],
)
def test_handler_that_does_not_fit_the_mode(
    tmp_path: Path, target: str, mode: str, named: list[str]
) -> None:
    env = user_module_env(tmp_path)
    result = run_to_completion(["serve", target, "--port", "0", "--mode", mode], tmp_path, env)
    assert_one_line_error(result, *named)


@pytest.mark.parametrize("option", ["--workers", "--threads"])
def test_a_count_below_one_is_refused(tmp_path: Path, option: str) -> None:
    result = run_to_completion(["demo", "echo", "--port", "0", option, "0"], tmp_path)
    assert result.returncode == EXIT_USAGE
    assert option in result.stderr
    assert "at least 1" in result.stderr


def test_serve_errors_reach_stderr_not_stdout(tmp_path: Path) -> None:
    result = run_to_completion(
        ["serve", "sockserve_no_such_module:Handler", "--port", "0"], tmp_path
    )
    assert result.stdout == ""
    assert result.stderr.startswith("sockserve: error:")


# -- binds ---------------------------------------------------------------------------


def host_port(printed: str) -> tuple[str, int]:
    """``127.0.0.1:5`` or ``[::1]:5`` (any ``scheme://`` dropped) as a socket address."""
    host, _, port = printed.split("://")[-1].rpartition(":")
    return host.strip("[]"), int(port)


def unix_echo(family_address: str | bytes, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(STOP_TIMEOUT)
        client.connect(family_address)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def stop_cleanly(command: Command) -> None:
    assert command.stop(signal.SIGTERM) == 0, command.stderr()
    assert "Traceback" not in command.stderr()


@pytest.mark.parametrize(
    "bind",
    ["tcp://127.0.0.1:0", "127.0.0.1:0"] + (["tcp://[::1]:0"] if has_ipv6_loopback() else []),
)
def test_tcp_binds(tmp_path: Path, bind: str) -> None:
    with running(["demo", "echo", "--bind", bind], tmp_path) as command:
        [printed] = command.read_bound_addresses()
        assert printed.startswith("[::1]:" if "::1" in bind else "127.0.0.1:")
        assert echo(host_port(printed), b"over tcp") == b"over tcp"
        stop_cleanly(command)


def test_udp_bind_with_a_datagram_handler(tmp_path: Path) -> None:
    args = ["serve", "ss_cli_upper:DatagramUpper", "--bind", "udp://127.0.0.1:0"]
    with running(args, tmp_path, user_module_env(tmp_path)) as command:
        [printed] = command.read_bound_addresses()
        assert printed.startswith("udp://127.0.0.1:")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(STOP_TIMEOUT)
            client.sendto(b"datagram", host_port(printed))
            assert client.recv(64) == b"DATAGRAM"
        stop_cleanly(command)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_unix_path_bind_with_a_mode(tmp_path: Path) -> None:
    with short_directory(tmp_path) as directory:
        path = directory / "echo.sock"
        args = ["demo", "echo", "--bind", f"unix:{path}", "--unix-mode", "0640"]
        with running(args, tmp_path) as command:
            assert command.read_bound_addresses() == [f"unix:{path}"]
            assert stat.S_IMODE(path.stat().st_mode) == 0o640
            assert unix_echo(str(path), b"over a file") == b"over a file"
            stop_cleanly(command)
        assert not path.exists()  # the server that created it removed it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract names: Linux")
def test_unix_abstract_bind(tmp_path: Path) -> None:
    name = f"sockserve-test-{os.getpid()}-{id(tmp_path)}"
    with running(["demo", "upper", "--bind", f"unix:@{name}"], tmp_path) as command:
        assert command.read_bound_addresses() == [f"unix:@{name}"]
        assert unix_echo("\0" + name, b"abstract\n") == b"ABSTRACT\n"
        stop_cleanly(command)


def test_inherited_socket_fd_bind(tmp_path: Path) -> None:
    """fd://N serves on a socket the parent bound and listens on (port 0, no race)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = listener.fileno()
        address = listener.getsockname()
        with running(["demo", "echo", "--bind", f"fd://{fd}"], tmp_path, pass_fds=(fd,)) as cmd:
            assert cmd.read_bound_addresses() == [f"127.0.0.1:{address[1]}"]
            assert echo(address, b"inherited") == b"inherited"
            stop_cleanly(cmd)


def test_two_binds_serve_from_one_process(tmp_path: Path) -> None:
    with short_directory(tmp_path) as directory:
        path = directory / "two.sock"
        args = ["demo", "echo", "--bind", "tcp://127.0.0.1:0", "--bind", f"unix:{path}"]
        with running([*args, "--mode", "pool"], tmp_path) as command:
            tcp, unix = command.read_bound_addresses()
            assert unix == f"unix:{path}"
            assert echo(host_port(tcp), b"one") == b"one"
            assert unix_echo(str(path), b"two") == b"two"
            stop_cleanly(command)


# -- targets and demos -----------------------------------------------------------------


def test_a_file_target(tmp_path: Path) -> None:
    handlers = tmp_path / "my_handlers.py"
    handlers.write_text(HANDLER_MODULE, encoding="utf-8")
    with running(["serve", f"{handlers}:Upper", "--port", "0"], tmp_path) as command:
        match, address = command.read_ready_line()
        assert match["handler"] == "Upper"
        assert echo(address, b"from a file\n") == b"FROM A FILE\n"
        stop_cleanly(command)


def test_a_server_factory_target(tmp_path: Path) -> None:
    args = ["serve", "ss_cli_upper:make_server", "--port", "0"]
    with running(args, tmp_path, user_module_env(tmp_path)) as command:
        match, address = command.read_ready_line()
        assert match["mode"] == "ThreadingTCPServer"  # the factory chose the class
        assert echo(address, b"factory\n") == b"FACTORY\n"
        stop_cleanly(command)


@pytest.mark.parametrize("mode", ["threading", "async"])
@pytest.mark.parametrize(
    ("demo", "payload", "check"),
    [
        ("upper", b"a line\nanother\n", lambda reply: reply == b"A LINE\nANOTHER\n"),
        ("discard", b"x" * 100_000, lambda reply: reply == b""),
        ("daytime", b"", lambda reply: reply.endswith(b" UTC\r\n") and reply.count(b"\n") == 1),
        (
            "chargen",
            b"",
            lambda reply: (
                len(reply) == CHARGEN_MAX_BYTES // 74 * 74
                and reply.startswith(b' !"#$%')
                and reply.split(b"\r\n")[1].startswith(b'!"#$%')
            ),
        ),
    ],
)
def test_demos(tmp_path: Path, demo: str, payload: bytes, check: Any, mode: str) -> None:
    with running(["demo", demo, "--port", "0", "--mode", mode], tmp_path) as command:
        _, address = command.read_ready_line()
        reply = echo(address, payload)
        assert check(reply), reply[:200]
        stop_cleanly(command)


# -- settings: command line > environment > config file > default ------------------------


def print_config(tmp_path: Path, *args: str, **env: str) -> dict[str, Any]:
    result = run_to_completion(
        ["demo", "echo", *args, "--print-config"], tmp_path, command_env(**env)
    )
    assert result.returncode == 0, result.stderr
    return tomllib.loads(result.stdout)


def test_print_config_shows_the_defaults(tmp_path: Path) -> None:
    config = print_config(tmp_path)
    assert config["drain-timeout"] == 30.0
    assert (config["host"], config["port"], config["mode"]) == ("127.0.0.1", 9999, "auto")
    assert "workers" not in config  # unset: a comment says what that means


def test_precedence_command_line_environment_file_default(tmp_path: Path) -> None:
    config_file = tmp_path / "sockserve.toml"
    config_file.write_text(
        'drain-timeout = 7\nlog-level = "error"\nmode = "pool"\n'
        'bind = ["tcp://127.0.0.1:0", "unix:@x"]\nunix-mode = 0o600\n',
        encoding="utf-8",
    )
    file_only = print_config(tmp_path, "--config", str(config_file))
    assert file_only["drain-timeout"] == 7
    assert file_only["bind"] == ["tcp://127.0.0.1:0", "unix:@x"]
    assert file_only["unix-mode"] == "0600"
    env = {
        "SOCKSERVE_DRAIN_TIMEOUT": "5",
        "SOCKSERVE_LOG_LEVEL": "info",
        "SOCKSERVE_BIND": "udp://127.0.0.1:0 unix:/tmp/a",
    }
    with_env = print_config(tmp_path, "--config", str(config_file), **env)
    assert with_env["drain-timeout"] == 5
    assert with_env["log-level"] == "info"
    assert with_env["bind"] == ["udp://127.0.0.1:0", "unix:/tmp/a"]
    assert with_env["mode"] == "pool"  # the file still counts where nothing overrides it
    command_line = print_config(
        tmp_path, "--config", str(config_file), "--drain-timeout", "3", "-v", **env
    )
    assert (command_line["drain-timeout"], command_line["log-level"]) == (3, "info")
    via_env = print_config(tmp_path, SOCKSERVE_CONFIG=str(config_file))
    assert via_env["drain-timeout"] == 7


def test_an_unknown_sockserve_variable_is_named_in_a_warning(tmp_path: Path) -> None:
    result = run_to_completion(
        ["demo", "echo", "--print-config"],
        tmp_path,
        command_env(SOCKSERVE_DRAIN_TIMOUT="5", SOCKSERVE_PURE_PYTHON="1"),
    )
    assert result.returncode == 0
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1, warnings
    assert "SOCKSERVE_DRAIN_TIMOUT" in warnings[0]
    assert "warning" in warnings[0]


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    args = ["demo", "echo", "--port", "0", "--log-format", "json", "--log-level", "info"]
    with running(args, tmp_path) as command:
        _, address = command.read_ready_line()
        assert echo(address, b"logged") == b"logged"
        command.wait_for_stderr("connection from")
        stop_cleanly(command)
        lines = command.stderr().splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry)
    assert any(json.loads(line)["logger"] == "sockserve.demo" for line in lines)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="switching users needs root")
def test_user_drops_privileges_after_binding(tmp_path: Path) -> None:
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    args = ["serve", "ss_cli_upper:WhoAmI", "--port", "0", "--mode", "sync", "--user", "nobody"]
    with running(args, tmp_path, user_module_env(tmp_path)) as command:
        _, address = command.read_ready_line()
        assert echo(address, b"") == str(nobody.pw_uid).encode()
        stop_cleanly(command)


def test_help_has_examples(tmp_path: Path) -> None:
    result = run_to_completion(["serve", "--help"], tmp_path)
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "--drain-timeout" in result.stdout


# -- settings that cannot work: one line, exit status 2 ---------------------------------

BAD_SETTINGS = {
    "workers-outside-prefork": (["--workers", "2"], ["--workers", "prefork"]),
    "threads-outside-pool": (["--mode", "sync", "--threads", "2"], ["--threads", "pool"]),
    "unix-mode-without-unix": (["--unix-mode", "0600"], ["--unix-mode", "unix:/PATH"]),
    "bind-and-port": (["--bind", "127.0.0.1:0", "--port", "0"], ["--bind", "--port"]),
    "bad-bind": (["--bind", "tcp://127.0.0.1"], ["--bind", "tcp://127.0.0.1"]),
    "bad-bind-scheme": (["--bind", "sctp://h:1"], ["--bind", "sctp://h:1", "scheme"]),
    "bad-bind-ipv6": (["--bind", "tcp://::1:80"], ["--bind", "[HOST]:PORT"]),
    "bad-systemd-name": (["--bind", "systemd:a:b"], ["systemd:a:b", "systemd:NAME"]),
    "fd-not-open": (["--bind", "fd://987"], ["fd://987"]),
    "stream-demo-on-udp": (["--bind", "udp://127.0.0.1:0"], ["udp://127.0.0.1:0", "datagram"]),
    "bad-mode": (["--mode", "fast"], ["--mode", "fast"]),
    "bad-drain-timeout": (["--drain-timeout", "soon"], ["--drain-timeout", "soon"]),
    "bad-unix-mode": (["--unix-mode", "rw"], ["--unix-mode", "octal"]),
    "unknown-user": (["--user", "sockserve-no-such-user"], ["sockserve-no-such-user"]),
    "unknown-group": (["--group", "sockserve-no-such-group"], ["sockserve-no-such-group"]),
    "unknown-option": (["--no-such-option", "x"], ["--no-such-option"]),
    "missing-tls-cert": (["--tls-cert", "x.pem"], ["--tls-cert", "x.pem"]),
}
if hasattr(os, "fork"):
    BAD_SETTINGS["prefork-two-binds"] = (
        ["--mode", "prefork", "--bind", "127.0.0.1:0", "--bind", "127.0.0.1:0"],
        ["prefork", "--bind"],
    )


@pytest.mark.parametrize(("args", "named"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_settings_that_cannot_work(tmp_path: Path, args: list[str], named: list[str]) -> None:
    port = [] if "--port" in args or "--bind" in args else ["--port", "0"]
    result = run_to_completion(["demo", "echo", *port, *args], tmp_path)
    assert_one_line_error(result, *named)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("SOCKSERVE_WORKERS", "many", ["SOCKSERVE_WORKERS", "many"]),
        ("SOCKSERVE_BIND", "tcp://127.0.0.1:0 nonsense", ["SOCKSERVE_BIND", "nonsense"]),
    ],
)
def test_bad_environment_values(
    tmp_path: Path, variable: str, value: str, named: list[str]
) -> None:
    result = run_to_completion(["demo", "echo"], tmp_path, command_env(**{variable: value}))
    assert_one_line_error(result, *named)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("drain-timeout = ", ["not valid TOML"]),
        ("drain_timeout = 5\n", ["drain_timeout", "drain-timeout"]),
        ("colour = 'blue'\n", ["colour"]),
        ("bind = 5\n", ["bind", "string"]),
    ],
    ids=["not-toml", "underscore-key", "unknown-key", "wrong-type"],
)
def test_bad_config_files(tmp_path: Path, text: str, named: list[str]) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text(text, encoding="utf-8")
    result = run_to_completion(["demo", "echo", "--config", str(config_file)], tmp_path)
    assert_one_line_error(result, str(config_file), *named)


@pytest.mark.parametrize(
    ("target", "bind", "named"),
    [
        ("ss_cli_upper:NoHandle", "127.0.0.1:0", ["NoHandle", "handler"]),
        ("sockserve:TCPServer", "127.0.0.1:0", ["server class", "factory"]),
        ("no_such_file.py:Upper", "127.0.0.1:0", ["no_such_file.py"]),
        ("ss_cli_upper:Upper", "udp://127.0.0.1:0", ["Upper", "udp://127.0.0.1:0", "datagram"]),
        ("ss_cli_upper:DatagramUpper", "127.0.0.1:0", ["DatagramUpper", "stream"]),
    ],
    ids=[
        "class-without-handle",
        "server-class",
        "missing-file",
        "stream-handler-on-udp",
        "datagram-handler-on-tcp",
    ],
)
def test_more_targets_that_cannot_work(
    tmp_path: Path, target: str, bind: str, named: list[str]
) -> None:
    result = run_to_completion(
        ["serve", target, "--bind", bind], tmp_path, user_module_env(tmp_path)
    )
    assert_one_line_error(result, *named)
