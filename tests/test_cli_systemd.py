"""``sockserve serve --bind systemd`` under a stand-in for systemd, with the real command.

systemd is played by the test. Socket activation: the test binds and listens itself,
then starts a launcher with ``pass_fds``; the launcher moves the sockets to descriptors
3, 4, … (in the test process that would clobber pytest's own), sets ``LISTEN_PID`` to
its own pid, which ``exec`` keeps, and execs ``python -m sockserve``. Notifications: a
datagram socket of the test's own in a temporary directory, named by ``NOTIFY_SOCKET``,
read with a timeout; ``WATCHDOG_USEC=200000`` asks for a ping every 0.1 s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from test_cli import (
    MODES,
    STOP_TIMEOUT,
    Command,
    assert_one_line_error,
    command_env,
    echo,
    host_port,
    run_to_completion,
    running,
    stop_cleanly,
)
from unix_paths import short_directory

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "AF_UNIX"), reason="systemd's protocols need Unix sockets"
)

#: Moves the descriptors listed in argv[1] (JSON) to 3, 4, …, sets LISTEN_PID to its own
#: pid and execs argv[2:]. Every descriptor it was given ends up at 3+ or closed.
LAUNCHER = """
import fcntl, json, os, sys
fds = json.loads(sys.argv[1])
out_of_the_way = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for target, fd in enumerate(out_of_the_way, start=3):
    os.dup2(fd, target)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""
#: WATCHDOG_USEC for the tests: 0.2 s, so a ping is due every 0.1 s.
WATCHDOG_USEC = 200_000
SYSTEMD_VARIABLES = (
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)


class ManagerSocket:
    """The test's stand-in for systemd's notify socket: every datagram, as fields."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(STOP_TIMEOUT)
        self.received: list[dict[str, str]] = []

    def wait_for(self, field: str, value: str | None = None) -> dict[str, str]:
        """The next message with ``field`` (equal to ``value`` if given); fails on timeout."""
        while True:
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                pytest.fail(f"no {field} notification in {STOP_TIMEOUT} s: {self.received}")
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append(message)
            if field in message and (value is None or message[field] == value):
                return message

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerSocket]:
    with short_directory(tmp_path) as directory:
        stand_in = ManagerSocket(directory)
        try:
            yield stand_in
        finally:
            stand_in.close()


def systemd_env(manager: ManagerSocket | None, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in command_env().items() if k not in SYSTEMD_VARIABLES}
    if manager is not None:
        env["NOTIFY_SOCKET"] = manager.path
    env.update(variables)
    return env


@contextmanager
def activated(
    args: list[str], cwd: Path, sockets: list[socket.socket], env: dict[str, str]
) -> Iterator[Command]:
    """The command started with ``sockets`` as descriptors 3, 4, … (socket activation)."""
    fds = [sock.fileno() for sock in sockets]
    env = dict(env, LISTEN_FDS=str(len(fds)))
    launcher = (sys.executable, "-c", LAUNCHER, json.dumps(fds))
    with running(args, cwd, env, pass_fds=tuple(fds), launcher=launcher) as command:
        yield command


def listening_tcp() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


@pytest.mark.parametrize("mode", MODES)
def test_activation_ready_serving_watchdog_stopping(
    tmp_path: Path, manager: ManagerSocket, mode: str
) -> None:
    """READY=1 once serving, a client served on the inherited socket, WATCHDOG=1 every
    half of WATCHDOG_USEC, SIGTERM gives STOPPING=1 and a clean exit: in every mode (in
    pre-fork mode the master sends them, from its own loop)."""
    env = systemd_env(manager, WATCHDOG_USEC=str(WATCHDOG_USEC), LISTEN_FDNAMES="web")
    args = ["demo", "echo", "--bind", "systemd", "--mode", mode]
    with listening_tcp() as listener, activated(args, tmp_path, [listener], env) as command:
        address = listener.getsockname()
        assert command.read_bound_addresses() == [f"127.0.0.1:{address[1]}"]
        ready = manager.wait_for("READY", "1")
        assert ready["STATUS"].startswith("serving: 0 active")
        assert echo(address, b"activated") == b"activated"
        for _ in range(3):  # periodic, not once
            manager.wait_for("WATCHDOG", "1")
        command.process.send_signal(signal.SIGTERM)
        stopping = manager.wait_for("STOPPING", "1")
        assert stopping["STATUS"].startswith("draining:")
        assert command.process.wait(STOP_TIMEOUT) == 0, command.stderr()
        assert "Traceback" not in command.stderr()
    assert [m for m in manager.received if "READY" in m] == [ready]  # once


def test_named_sockets_choose_and_the_others_are_closed_with_a_warning(
    tmp_path: Path, manager: ManagerSocket
) -> None:
    env = systemd_env(manager, LISTEN_FDNAMES="web:admin")
    args = ["demo", "echo", "--bind", "systemd:admin", "--mode", "pool"]
    with (
        listening_tcp() as web,
        listening_tcp() as admin,
        activated(args, tmp_path, [web, admin], env) as command,
    ):
        assert command.read_bound_addresses() == [f"127.0.0.1:{admin.getsockname()[1]}"]
        command.wait_for_stderr("closing inherited socket 'web' (descriptor 3")
        manager.wait_for("READY", "1")
        assert echo(admin.getsockname(), b"admin only") == b"admin only"
        stop_cleanly(command)
    assert not any("WATCHDOG" in m for m in manager.received)  # not asked for: not sent


def test_every_inherited_socket_gets_a_server(tmp_path: Path) -> None:
    with short_directory(tmp_path) as directory:
        path = str(directory / "activated.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix, listening_tcp() as tcp:
            unix.bind(path)
            unix.listen()
            env = systemd_env(None, LISTEN_FDNAMES="tcp:unix")
            args = ["demo", "echo", "--bind", "systemd"]
            with activated(args, tmp_path, [tcp, unix], env) as cmd:
                tcp_printed, unix_printed = cmd.read_bound_addresses()
                assert host_port(tcp_printed) == tcp.getsockname()
                assert unix_printed == f"unix:{path}"
                assert echo(tcp.getsockname(), b"one") == b"one"
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(STOP_TIMEOUT)
                    client.connect(path)
                    client.sendall(b"two")
                    client.shutdown(socket.SHUT_WR)
                    assert client.recv(16) == b"two"
                stop_cleanly(cmd)


def test_listen_fds_for_another_process_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = systemd_env(None, LISTEN_FDS="1", LISTEN_PID="1")
    result = run_to_completion(["demo", "echo", "--bind", "systemd"], tmp_path, env)
    assert_one_line_error(result, "LISTEN_PID=1", "another process")


def test_systemd_bind_without_sockets_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_to_completion(["demo", "echo", "--bind", "systemd"], tmp_path, systemd_env(None))
    assert_one_line_error(result, "--bind systemd", "LISTEN_FDS")


def test_a_name_nothing_is_called_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = systemd_env(None, LISTEN_FDNAMES="web")
    with listening_tcp() as web:
        fds = (web.fileno(),)
        launcher = (sys.executable, "-c", LAUNCHER, json.dumps(list(fds)))
        with running(
            ["demo", "echo", "--bind", "systemd:dns"],
            tmp_path,
            dict(env, LISTEN_FDS="1"),
            pass_fds=fds,
            launcher=launcher,
        ) as command:
            assert command.process.wait(STOP_TIMEOUT) == 2
            stderr = command.stderr()
    assert stderr.count("\n") == 1, stderr
    assert "no inherited socket is named 'dns'" in stderr
    assert "'web'" in stderr


def test_prefork_with_two_inherited_sockets_is_refused(tmp_path: Path) -> None:
    env = systemd_env(None, LISTEN_FDNAMES="a:b")
    args = ["demo", "echo", "--bind", "systemd", "--mode", "prefork"]
    if not hasattr(os, "fork"):
        pytest.skip("prefork needs fork()")
    with listening_tcp() as a, listening_tcp() as b, activated(args, tmp_path, [a, b], env) as cmd:
        assert cmd.process.wait(STOP_TIMEOUT) == 2
        assert "--bind systemd:NAME" in cmd.stderr()
