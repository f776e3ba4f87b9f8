"""systemd's protocols, spoken without systemd: socket activation and sd_notify.

Socket activation is tested with real inherited descriptors. The test binds the
sockets, queues a client on each (the kernel holds it until someone accepts), and starts
a launcher process with ``pass_fds``: the launcher moves the sockets to descriptors 3, 4,
5 (doing that in the test process would clobber pytest's own descriptors), sets
``LISTEN_PID`` to its own pid, which ``exec`` keeps, and execs a child that calls
``inherited_sockets()``, serves each queued client once and reports as JSON.

Notifications go to a datagram socket of the test's own, bound to a file or to an
abstract name, standing in for systemd's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.errors import ConfigurationError, SocketActivationError, SystemdEnvironmentError
from sockserve.systemd import (
    LISTEN_VARIABLES,
    SD_LISTEN_FDS_START,
    WATCHDOG_PING_FRACTION,
    Notifier,
    inherited_sockets,
    watchdog_interval,
)
from unix_paths import short_directory

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract names")

#: Seconds any socket in these tests waits before failing the test.
SOCKET_TIMEOUT = 10.0
#: Seconds a launched child may take (interpreter start-up included) before it is killed.
CHILD_TIMEOUT = 60.0
SYSTEMD_VARIABLES = (*LISTEN_VARIABLES, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
SOURCE_ROOT = Path(sockserve.__file__).resolve().parent.parent

#: Moves the descriptors named in argv[1] to 3, 4, … and execs the child with LISTEN_PID
#: set to its own pid (exec keeps the pid). Closes every other descriptor it was given.
LAUNCHER = """
import fcntl, json, os, sys
spec = json.loads(sys.argv[1])
out_of_the_way = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in spec["fds"]]
for fd in spec["fds"]:
    os.close(fd)
for target, fd in enumerate(out_of_the_way, start=3):
    os.dup2(fd, target)
    os.close(fd)
env = dict(os.environ, **spec["env"])
if spec["listen_pid_is_child"]:
    env["LISTEN_PID"] = str(os.getpid())
os.execve(sys.executable, [sys.executable, "-c", spec["child"]], env)
"""

#: Adopts the inherited sockets, serves one queued client on each, reports as JSON.
CHILD = """
import json, os, socket
from sockserve.systemd import inherited_sockets
variables = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
try:
    found = inherited_sockets()
except Exception as exc:
    print(json.dumps({
        "error": type(exc).__name__,
        "message": str(exc),
        "fd3_is_open": is_open(3),
        "left_in_environment": [v for v in variables if v in os.environ],
    }))
    raise SystemExit(0)
report = []
for inherited in found:
    sock = inherited.socket
    report.append({
        "fd": inherited.fd, "name": inherited.name,
        "family": int(inherited.family), "type": int(inherited.type),
        "socket_fd": sock.fileno(), "inheritable": os.get_inheritable(inherited.fd),
        "sockname": sock.getsockname(),
    })
    sock.settimeout(10)
    reply = ("hello from " + inherited.name).encode()
    if inherited.type == socket.SOCK_STREAM:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(reply)
    else:
        _, peer = sock.recvfrom(100)
        sock.sendto(reply, peer)
    sock.close()
print(json.dumps({
    "sockets": report,
    "left_in_environment": [v for v in variables if v in os.environ],
}))
"""


@pytest.fixture(autouse=True)
def no_systemd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets what it needs, even when pytest itself runs under systemd."""
    for variable in SYSTEMD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def unix_dir(tmp_path: Path) -> Iterator[Path]:
    with short_directory(tmp_path) as directory:
        yield directory


def launch_activated(
    fds: list[int], env: dict[str, str], *, listen_pid_is_child: bool = True
) -> dict[str, Any]:
    """Run ``CHILD`` with ``fds`` as descriptors 3, 4, …; its JSON report."""
    spec = {"fds": fds, "env": env, "listen_pid_is_child": listen_pid_is_child, "child": CHILD}
    child_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, json.dumps(spec)],
        pass_fds=fds,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
    )
    try:
        out, err = process.communicate(timeout=CHILD_TIMEOUT)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


# -- socket activation, with real inherited descriptors --------------------------------------


def test_inherited_tcp_unix_and_udp_sockets_are_adopted_and_serve(unix_dir: Path) -> None:
    unix_path = str(unix_dir / "activated.sock")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix_client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_client,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        unix.bind(unix_path)
        unix.listen()
        udp.bind(("127.0.0.1", 0))
        # Clients first: the kernel queues them until the child accepts or reads.
        tcp_client = socket.create_connection(tcp.getsockname(), timeout=SOCKET_TIMEOUT)
        unix_client.settimeout(SOCKET_TIMEOUT)
        unix_client.connect(unix_path)
        udp_client.settimeout(SOCKET_TIMEOUT)
        udp_client.sendto(b"query", udp.getsockname())

        with tcp_client:
            report = launch_activated(
                [tcp.fileno(), unix.fileno(), udp.fileno()],
                {"LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:admin:dns"},
            )
            assert tcp_client.recv(100) == b"hello from web"
        assert unix_client.recv(100) == b"hello from admin"
        assert udp_client.recv(100) == b"hello from dns"

    found = report["sockets"]
    assert [(s["fd"], s["name"]) for s in found] == [(3, "web"), (4, "admin"), (5, "dns")]
    assert [(s["family"], s["type"]) for s in found] == [
        (socket.AF_INET, socket.SOCK_STREAM),
        (socket.AF_UNIX, socket.SOCK_STREAM),
        (socket.AF_INET, socket.SOCK_DGRAM),
    ]
    assert [s["socket_fd"] for s in found] == [3, 4, 5]  # the socket owns the descriptor
    assert [s["inheritable"] for s in found] == [False] * 3  # close-on-exec, as systemd's
    assert found[1]["sockname"] == unix_path
    assert report["left_in_environment"] == []  # unset: children will not take them


def test_without_fdnames_every_socket_is_unknown() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        with socket.create_connection(tcp.getsockname(), timeout=SOCKET_TIMEOUT) as client:
            report = launch_activated([tcp.fileno()], {"LISTEN_FDS": "1"})
            assert client.recv(100) == b"hello from unknown"
    assert [s["name"] for s in report["sockets"]] == ["unknown"]


def test_a_descriptor_that_is_not_a_socket() -> None:
    read_end, write_end = os.pipe()
    try:
        report = launch_activated([read_end], {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "pipe"})
    finally:
        os.close(read_end)
        os.close(write_end)
    assert report["error"] == "SocketActivationError"
    assert "descriptor 3 ('pipe')" in report["message"]
    assert "is not a socket" in report["message"]
    assert report["left_in_environment"] == []


def test_a_descriptor_that_is_not_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        report = launch_activated([tcp.fileno()], {"LISTEN_FDS": "2"})
    assert report["error"] == "SocketActivationError"
    assert "descriptor 4" in report["message"]
    assert "is not open" in report["message"]
    assert report["fd3_is_open"]  # the socket adopted before the error was let go, not closed


def test_inherited_sockets_for_another_process_in_a_child() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        report = launch_activated(
            [tcp.fileno()], {"LISTEN_FDS": "1", "LISTEN_PID": "1"}, listen_pid_is_child=False
        )
    assert report["error"] == "SocketActivationError"
    assert "LISTEN_PID=1" in report["message"]
    assert "another process" in report["message"]


# -- socket activation: the variables, in this process (no descriptor is touched) ---------


def test_no_listen_fds_means_no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))  # stray, and unset all the same
    assert inherited_sockets() == []
    assert not any(variable in os.environ for variable in LISTEN_VARIABLES)


def test_zero_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    monkeypatch.setenv("LISTEN_FDNAMES", "")
    assert inherited_sockets() == []


@pytest.mark.parametrize("unset_environment", [True, False])
def test_listen_pid_of_another_process(
    monkeypatch: pytest.MonkeyPatch, unset_environment: bool
) -> None:
    other = os.getppid()
    monkeypatch.setenv("LISTEN_PID", str(other))
    monkeypatch.setenv("LISTEN_FDS", "1")
    with pytest.raises(SocketActivationError) as excinfo:
        inherited_sockets(unset_environment=unset_environment)
    message = str(excinfo.value)
    assert f"LISTEN_PID={other}" in message
    assert f"this process is {os.getpid()}" in message
    assert "meant for another process" in message
    assert isinstance(excinfo.value, ConfigurationError)
    assert ("LISTEN_FDS" in os.environ) is not unset_environment


def test_listen_fds_without_listen_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    with pytest.raises(SocketActivationError) as excinfo:
        inherited_sockets()
    assert "LISTEN_PID is not" in str(excinfo.value)


@pytest.mark.parametrize("garbage", ["", "two", "-1", "1.0", " 1", "0x3", "²"])
def test_listen_fds_that_is_not_a_count(monkeypatch: pytest.MonkeyPatch, garbage: str) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", garbage)
    with pytest.raises(SocketActivationError) as excinfo:
        inherited_sockets()
    assert f"LISTEN_FDS={garbage!r}" in str(excinfo.value)


@pytest.mark.parametrize("garbage", ["", "me", "-5"])
def test_listen_pid_that_is_not_a_pid(monkeypatch: pytest.MonkeyPatch, garbage: str) -> None:
    monkeypatch.setenv("LISTEN_PID", garbage)
    monkeypatch.setenv("LISTEN_FDS", "1")
    with pytest.raises(SocketActivationError) as excinfo:
        inherited_sockets()
    assert "LISTEN_PID" in str(excinfo.value)


@pytest.mark.parametrize(("count", "names"), [("1", "web:admin"), ("2", "web"), ("1", "")])
def test_names_that_do_not_match_the_count(
    monkeypatch: pytest.MonkeyPatch, count: str, names: str
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", count)
    monkeypatch.setenv("LISTEN_FDNAMES", names)
    with pytest.raises(SocketActivationError) as excinfo:
        inherited_sockets()
    assert f"LISTEN_FDS={count}" in str(excinfo.value)
    assert repr(names) in str(excinfo.value)


def test_first_descriptor_is_three() -> None:
    assert SD_LISTEN_FDS_START == 3


# -- notifications -------------------------------------------------------------------------


@pytest.fixture
def notify_socket(unix_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A stand-in for systemd's notify socket, named by ``NOTIFY_SOCKET``."""
    path = unix_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.settimeout(SOCKET_TIMEOUT)
        receiver.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield receiver


@pytest.fixture
def notifier(notify_socket: socket.socket) -> Iterator[Notifier]:
    made = Notifier.from_environment()
    assert made is not None
    with made:
        yield made


def test_ready_stopping_status_watchdog(notify_socket: socket.socket, notifier: Notifier) -> None:
    assert notifier.ready()
    assert notify_socket.recv(4096) == b"READY=1"
    assert notifier.status("serving 3 clients")
    assert notify_socket.recv(4096) == b"STATUS=serving 3 clients"
    assert notifier.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_reloading_carries_the_monotonic_time(
    notify_socket: socket.socket, notifier: Notifier
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = notify_socket.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    name, _, usec = second.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_send_puts_fields_in_one_datagram(notify_socket: socket.socket, notifier: Notifier) -> None:
    assert notifier.send(READY=True, STATUS="up", MAINPID=1234, ERRNO=0)
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up\nMAINPID=1234\nERRNO=0"


def test_status_is_kept_to_one_line(notify_socket: socket.socket, notifier: Notifier) -> None:
    assert notifier.status("draining\n3 left\r\n")
    assert notify_socket.recv(4096) == b"STATUS=draining 3 left"


@pytest.mark.parametrize(
    "fields", [{"STATUS": "two\nlines"}, {"A=B": 1}, {"": 1}, {"BAD\nNAME": 1}], ids=repr
)
def test_a_malformed_field_is_refused_before_sending(
    notify_socket: socket.socket, notifier: Notifier, fields: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        notifier.send(**fields)
    notify_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)  # nothing went out


@needs_linux
def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sockserve-test-notify-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.settimeout(SOCKET_TIMEOUT)
        receiver.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_environment()
        assert notifier is not None
        with notifier:
            assert notifier.address == "\0" + name
            assert notifier.ready()
            assert receiver.recv(4096) == b"READY=1"
            assert notifier.watchdog()
            assert receiver.recv(4096) == b"WATCHDOG=1"


def test_notify_socket_unset_or_empty_means_no_notifier(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Notifier.from_environment() is None
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert Notifier.from_environment() is None


def test_unsupported_notify_socket_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify.sock")
    with caplog.at_level(logging.WARNING, logger="sockserve.systemd"):
        assert Notifier.from_environment() is None
    assert "relative/notify.sock" in caplog.text


def test_from_environment_can_unset_the_variable(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = Notifier.from_environment(unset_environment=True)
    assert notifier is not None
    assert "NOTIFY_SOCKET" not in os.environ
    with notifier:
        assert notifier.ready()
    assert notify_socket.recv(4096) == b"READY=1"


def test_the_notify_socket_is_close_on_exec(notifier: Notifier) -> None:
    assert notifier.ready()
    assert notifier._socket is not None
    assert not notifier._socket.get_inheritable()
    assert notifier._socket.getblocking() is False


def test_a_missing_manager_is_logged_once_and_never_raises(
    unix_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(unix_dir / "nobody-here.sock"))
    notifier = Notifier.from_environment()
    assert notifier is not None
    with notifier, caplog.at_level(logging.WARNING, logger="sockserve.systemd"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    warnings = [r for r in caplog.records if r.name == "sockserve.systemd"]
    assert len(warnings) == 1
    assert "nobody-here.sock" in warnings[0].getMessage()


def test_a_manager_that_does_not_read_never_blocks_the_sender(
    notify_socket: socket.socket, notifier: Notifier, caplog: pytest.LogCaptureFixture
) -> None:
    """Its queue fills; sends then fail at once (EAGAIN) instead of waiting for room."""
    with caplog.at_level(logging.WARNING, logger="sockserve.systemd"):
        for _ in range(100_000):
            if not notifier.watchdog():
                break
        else:
            pytest.fail("100,000 datagrams fit in the queue of a socket nobody reads")
        assert notifier.watchdog() is False
    assert len([r for r in caplog.records if r.name == "sockserve.systemd"]) == 1
    assert notify_socket.recv(4096) == b"WATCHDOG=1"  # the queued ones are intact


def test_close_is_idempotent(notify_socket: socket.socket, notifier: Notifier) -> None:
    notifier.close()
    notifier.close()
    assert notifier.ready()  # a later send opens a new socket
    assert notify_socket.recv(4096) == b"READY=1"


# -- the watchdog --------------------------------------------------------------------------


def test_no_watchdog() -> None:
    assert watchdog_interval() is None


def test_watchdog_interval_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 30.0
    assert WATCHDOG_PING_FRACTION == 0.5  # ping every 15 s: systemd's advice


def test_watchdog_meant_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert watchdog_interval() is None


def test_watchdog_of_zero_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval() is None


@pytest.mark.parametrize(
    ("variable", "value"), [("WATCHDOG_USEC", "30s"), ("WATCHDOG_USEC", ""), ("WATCHDOG_PID", "x")]
)
def test_watchdog_variables_that_are_not_numbers(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemdEnvironmentError) as excinfo:
        watchdog_interval()
    assert variable in str(excinfo.value)
