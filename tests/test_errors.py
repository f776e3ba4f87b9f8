"""Bad input gets a clear error, and leaks nothing.

Every mistake a user can make when constructing a server (a port out of range, a host
that does not resolve, an address of the wrong shape, a port already taken, a handler
that cannot be called, a Unix socket path that already exists, dual stack on a Unix
server) raises a ``sockserve.errors`` exception that also derives from the built-in
exception the standard library raises in that case, so old ``except`` clauses still match.
Each message names the problem and the address. A constructor that fails has closed its
socket: hundreds of failed constructions leave the process with the descriptors it had.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sockserve
import sockserve.errors
from sockserve.errors import (
    AddressError,
    AddressInUseError,
    BindError,
    ConfigurationError,
    HandlerClassError,
    HostResolutionError,
    PeerProtocolError,
    PortOutOfRangeError,
    ProxyHeaderError,
    SocketActivationError,
    SockserveError,
    SystemdEnvironmentError,
    UnixSocketPathExistsError,
)
from unix_paths import short_directory

#: A name under the reserved ``.invalid`` TLD (RFC 6761): it never resolves. The local
#: resolver may still be asked; it answers NXDOMAIN, or fails at once when unreachable.
UNRESOLVABLE_HOST = "sockserve-test.invalid"
#: Failed constructions per descriptor-leak check.
LEAK_ROUNDS = 200
#: Fewer rounds where each failure may wait on the resolver (seen here: usually under a
#: millisecond, now and then a 5 s resolver retry). A leak shows after a single round
#: anyway, because the failures are kept alive while the descriptors are counted.
RESOLVER_LEAK_ROUNDS = 10

needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
needs_proc_fd = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/self/fd"
)


class Handler(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        pass


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def bound_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 held for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def unix_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for Unix socket files, short enough for the AF_UNIX path limit."""
    with short_directory(tmp_path) as directory:
        yield directory


def make_stale_socket(path: Path) -> None:
    """Leave a socket file with nobody behind it, as a crashed server does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def make_symlink_to_stale_socket(path: Path) -> None:
    """A symlink is not a socket file, even when it points to one: never followed."""
    target = path.with_name("target.sock")
    make_stale_socket(target)
    path.symlink_to(target.name)


# -- each mistake: its error class, its built-in base, its message -----------------------


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.UDPServer])
@pytest.mark.parametrize("port", [-1, 70000])
def test_port_out_of_range(server_class: Any, port: int) -> None:
    with pytest.raises(PortOutOfRangeError) as excinfo:
        server_class(("127.0.0.1", port), Handler)
    exc = excinfo.value
    assert isinstance(exc, OverflowError)  # what the socket module raises
    assert isinstance(exc, AddressError)
    assert isinstance(exc, SockserveError)
    message = str(exc)
    assert "out of range" in message
    assert f"127.0.0.1:{port}" in message


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.UDPServer])
def test_host_that_does_not_resolve(server_class: Any) -> None:
    with pytest.raises(HostResolutionError) as excinfo:
        server_class((UNRESOLVABLE_HOST, 0), Handler)
    exc = excinfo.value
    assert isinstance(exc, socket.gaierror)  # what the socket module raises
    assert isinstance(exc, OSError)
    assert isinstance(exc, AddressError)
    assert isinstance(exc, SockserveError)
    assert isinstance(exc.errno, int)  # the resolver's EAI_* code, kept
    message = str(exc)
    assert "cannot resolve" in message
    assert UNRESOLVABLE_HOST in message


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("127.0.0.1:80", "127.0.0.1:80"),  # host and port in one string
        (("127.0.0.1",), "127.0.0.1"),  # no port
        (("127.0.0.1", "80"), "127.0.0.1"),  # the port as a string
        (("127.0.0.1", None), "127.0.0.1"),
    ],
    ids=["host-colon-port-string", "no-port", "port-as-string", "port-none"],
)
def test_malformed_tcp_address(address: Any, shown: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        sockserve.TCPServer(address, Handler)
    exc = excinfo.value
    assert isinstance(exc, TypeError)  # what the socket module raises
    assert isinstance(exc, SockserveError)
    message = str(exc)
    assert "malformed address" in message
    assert shown in message


def test_tcp_port_in_use(listening_port: int) -> None:
    with pytest.raises(AddressInUseError) as excinfo:
        sockserve.TCPServer(("127.0.0.1", listening_port), Handler)
    exc = excinfo.value
    assert isinstance(exc, OSError)
    assert isinstance(exc, BindError)
    assert isinstance(exc, SockserveError)
    assert exc.errno == errno.EADDRINUSE
    # Translated at the boundary, the kernel's error kept as the cause.
    assert isinstance(exc.__cause__, OSError)
    assert exc.__cause__.errno == errno.EADDRINUSE
    message = str(exc)
    assert "already in use" in message
    assert f"127.0.0.1:{listening_port}" in message


def test_udp_port_in_use(bound_udp_port: int) -> None:
    with pytest.raises(AddressInUseError) as excinfo:
        sockserve.UDPServer(("127.0.0.1", bound_udp_port), Handler)
    assert excinfo.value.errno == errno.EADDRINUSE
    message = str(excinfo.value)
    assert "already in use" in message
    assert f"127.0.0.1:{bound_udp_port}" in message


@pytest.mark.parametrize(
    "not_callable",
    [42, None, "Handler", Handler.__new__(Handler)],
    ids=["int", "None", "str", "handler-instance"],
)
@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.UDPServer])
def test_handler_class_that_is_not_callable(server_class: Any, not_callable: Any) -> None:
    with pytest.raises(HandlerClassError) as excinfo:
        server_class(("127.0.0.1", 0), not_callable)
    exc = excinfo.value
    assert isinstance(exc, TypeError)
    assert isinstance(exc, ConfigurationError)
    assert isinstance(exc, SockserveError)
    message = str(exc)
    assert "RequestHandlerClass" in message
    assert repr(not_callable) in message
    assert "127.0.0.1:0" in message


@needs_unix
def test_handler_class_error_names_a_unix_path(unix_dir: Path) -> None:
    path = unix_dir / "h.sock"
    with pytest.raises(HandlerClassError) as excinfo:
        sockserve.UnixStreamServer(str(path), object())
    assert str(path) in str(excinfo.value)
    assert not path.exists()  # nothing was bound


UNIX_PATH_OCCUPANTS: dict[str, Callable[[Path], Any]] = {
    "plain-file": lambda path: path.write_bytes(b"not a socket"),
    "symlink-to-a-stale-socket": make_symlink_to_stale_socket,
}


@needs_unix
@pytest.mark.parametrize("occupant", sorted(UNIX_PATH_OCCUPANTS))
@pytest.mark.parametrize("server_class_name", ["UnixStreamServer", "UnixDatagramServer"], ids=str)
def test_unix_socket_path_that_already_exists(
    unix_dir: Path, server_class_name: str, occupant: str
) -> None:
    path = unix_dir / "s.sock"
    UNIX_PATH_OCCUPANTS[occupant](path)
    before = path.lstat()
    with pytest.raises(UnixSocketPathExistsError) as excinfo:
        getattr(sockserve, server_class_name)(str(path), Handler)
    exc = excinfo.value
    assert isinstance(exc, AddressInUseError)
    assert isinstance(exc, OSError)
    assert isinstance(exc, SockserveError)
    assert exc.errno == errno.EADDRINUSE
    message = str(exc)
    assert "already exists" in message
    assert str(path) in message
    # Someone else's file: a server that failed to bind must not remove it.
    after = path.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


@needs_unix
def test_unix_socket_path_of_a_live_server_is_left_alone(unix_dir: Path) -> None:
    path = unix_dir / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.settimeout(10.0)
        live.bind(str(path))
        live.listen()
        with pytest.raises(UnixSocketPathExistsError) as excinfo:
            sockserve.UnixStreamServer(str(path), Handler)
        assert str(path) in str(excinfo.value)
        # The live server still gets its clients.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10.0)
            client.connect(str(path))
            conn, _ = live.accept()
            conn.close()


@needs_unix
@pytest.mark.parametrize("server_class_name", ["UnixStreamServer", "UnixDatagramServer"])
def test_dual_stack_on_a_unix_server(unix_dir: Path, server_class_name: str) -> None:
    path = unix_dir / "d.sock"
    server_class = getattr(sockserve, server_class_name)
    with pytest.raises(ConfigurationError) as excinfo:
        server_class(str(path), Handler, dual_stack=True)
    message = str(excinfo.value)
    assert "dual_stack" in message
    assert str(path) in message
    assert not path.exists()


@needs_unix
def test_dual_stack_class_attribute_on_a_unix_server(unix_dir: Path) -> None:
    class DualStackUnix(sockserve.UnixStreamServer):
        dual_stack = True

    path = unix_dir / "d.sock"
    with pytest.raises(ConfigurationError) as excinfo:
        DualStackUnix(str(path), Handler)
    assert "dual_stack" in str(excinfo.value)
    assert str(path) in str(excinfo.value)
    assert not path.exists()


# -- server_bind() called by the user, after bind_and_activate=False ---------------------


def test_server_bind_by_hand_reports_a_port_in_use(listening_port: int) -> None:
    server = sockserve.TCPServer(("127.0.0.1", listening_port), Handler, bind_and_activate=False)
    try:
        server.socket.settimeout(10.0)
        with pytest.raises(AddressInUseError) as excinfo:
            server.server_bind()
        assert excinfo.value.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{listening_port}" in str(excinfo.value)
    finally:
        server.server_close()
    assert server.socket.fileno() == -1


@pytest.mark.parametrize(
    ("address", "error_class", "shown"),
    [
        (("127.0.0.1", 70000), PortOutOfRangeError, "127.0.0.1:70000"),
        ((UNRESOLVABLE_HOST, 0), HostResolutionError, UNRESOLVABLE_HOST),
        ("127.0.0.1:80", AddressError, "127.0.0.1:80"),
    ],
    ids=["port-out-of-range", "unresolvable-host", "malformed"],
)
def test_server_bind_by_hand_reports_a_bad_address(
    address: Any, error_class: type[Exception], shown: str
) -> None:
    server = sockserve.TCPServer(address, Handler, bind_and_activate=False)
    try:
        with pytest.raises(error_class) as excinfo:
            server.server_bind()
        assert shown in str(excinfo.value)
    finally:
        server.server_close()
    assert server.socket.fileno() == -1


@needs_unix
def test_server_bind_by_hand_reports_an_existing_unix_path(unix_dir: Path) -> None:
    path = unix_dir / "b.sock"
    path.write_bytes(b"not a socket")
    server = sockserve.UnixStreamServer(str(path), Handler, bind_and_activate=False)
    try:
        with pytest.raises(UnixSocketPathExistsError) as excinfo:
            server.server_bind()
        assert excinfo.value.errno == errno.EADDRINUSE
        assert str(path) in str(excinfo.value)
    finally:
        server.server_close()
    assert server.socket.fileno() == -1
    assert path.exists()  # not ours to remove


def test_server_bind_by_hand_succeeds_after_setting_options() -> None:
    """The point of bind_and_activate=False: options first, then bind and listen."""
    server = sockserve.TCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    try:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        server.server_bind()
        server.server_activate()
        host, port = server.server_address
        assert host == "127.0.0.1"
        assert port != 0
        with socket.create_connection(server.server_address, timeout=10.0):
            pass
    finally:
        server.server_close()
    assert server.socket.fileno() == -1


# -- nothing leaks -----------------------------------------------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_failures_leak_no_descriptor(
    construct: Callable[[], Any], error_class: type[Exception], rounds: int
) -> None:
    """Fail ``rounds`` constructions; count descriptors with every failure still alive.

    Each exception's traceback keeps the half-built server (and its socket) referenced, so
    a socket the constructor forgot to close is still open when the descriptors are
    counted: the garbage collector cannot hide the leak.
    """
    with pytest.raises(error_class):
        construct()  # first use may open lasting descriptors (resolver, lazy imports)
    gc.collect()
    before = open_descriptors()
    failures: list[BaseException] = []
    for _ in range(rounds):
        try:
            construct()
        except error_class as exc:
            failures.append(exc)
    assert len(failures) == rounds
    held = open_descriptors()
    failures.clear()
    gc.collect()
    after = open_descriptors()
    assert held == before, f"{held - before} descriptor(s) leaked by {rounds} failures"
    assert after == before


@needs_proc_fd
@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.UDPServer])
@pytest.mark.parametrize(
    ("address", "error_class"),
    [
        (("127.0.0.1", -1), PortOutOfRangeError),
        (("127.0.0.1", 70000), PortOutOfRangeError),
        ("127.0.0.1:80", AddressError),
    ],
    ids=["port-minus-1", "port-70000", "malformed"],
)
def test_bad_address_leaks_no_descriptor(
    server_class: Any, address: Any, error_class: type[Exception]
) -> None:
    assert_failures_leak_no_descriptor(
        lambda: server_class(address, Handler), error_class, LEAK_ROUNDS
    )


@needs_proc_fd
def test_unresolvable_host_leaks_no_descriptor() -> None:
    assert_failures_leak_no_descriptor(
        lambda: sockserve.TCPServer((UNRESOLVABLE_HOST, 0), Handler),
        HostResolutionError,
        RESOLVER_LEAK_ROUNDS,
    )


@needs_proc_fd
@pytest.mark.parametrize(
    "server_class",
    [sockserve.TCPServer, sockserve.ThreadingTCPServer, sockserve.ThreadPoolTCPServer],
)
def test_port_in_use_leaks_no_descriptor(server_class: Any, listening_port: int) -> None:
    assert_failures_leak_no_descriptor(
        lambda: server_class(("127.0.0.1", listening_port), Handler),
        AddressInUseError,
        LEAK_ROUNDS,
    )


@needs_proc_fd
def test_handler_class_error_leaks_no_descriptor() -> None:
    assert_failures_leak_no_descriptor(
        lambda: sockserve.TCPServer(("127.0.0.1", 0), 42), HandlerClassError, LEAK_ROUNDS
    )


@needs_proc_fd
def test_server_bind_by_hand_then_close_leaks_no_descriptor(listening_port: int) -> None:
    def construct() -> None:
        server = sockserve.TCPServer(
            ("127.0.0.1", listening_port), Handler, bind_and_activate=False
        )
        try:
            server.server_bind()
        finally:
            server.server_close()

    assert_failures_leak_no_descriptor(construct, AddressInUseError, LEAK_ROUNDS)


@needs_proc_fd
@needs_unix
@pytest.mark.parametrize("server_class_name", ["UnixStreamServer", "UnixDatagramServer"])
def test_existing_unix_path_leaks_no_descriptor(unix_dir: Path, server_class_name: str) -> None:
    path = unix_dir / "l.sock"
    path.write_bytes(b"not a socket")
    server_class = getattr(sockserve, server_class_name)
    assert_failures_leak_no_descriptor(
        lambda: server_class(str(path), Handler), UnixSocketPathExistsError, LEAK_ROUNDS
    )
    assert path.exists()


@needs_proc_fd
@needs_unix
def test_dual_stack_on_unix_leaks_no_descriptor(unix_dir: Path) -> None:
    path = unix_dir / "d.sock"
    assert_failures_leak_no_descriptor(
        lambda: sockserve.UnixStreamServer(str(path), Handler, dual_stack=True),
        ConfigurationError,
        LEAK_ROUNDS,
    )


# -- the hierarchy -----------------------------------------------------------------------


def exception_classes_in(module: Any) -> list[type[BaseException]]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]


def test_every_error_class_derives_from_sockserve_error() -> None:
    classes = exception_classes_in(sockserve.errors)
    assert SockserveError in classes
    assert len(classes) >= 9
    for cls in classes:
        assert issubclass(cls, SockserveError), f"{cls.__name__} is outside SockserveError"


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (SockserveError, (Exception,)),
        (ConfigurationError, (SockserveError, TypeError)),
        (HandlerClassError, (ConfigurationError, TypeError)),
        (SystemdEnvironmentError, (ConfigurationError, TypeError)),
        (SocketActivationError, (SystemdEnvironmentError, ConfigurationError)),
        (AddressError, (SockserveError, ValueError)),
        (PortOutOfRangeError, (AddressError, OverflowError)),
        (HostResolutionError, (AddressError, socket.gaierror, OSError)),
        (BindError, (SockserveError, OSError)),
        (AddressInUseError, (BindError, OSError)),
        (UnixSocketPathExistsError, (AddressInUseError, OSError)),
        (PeerProtocolError, (SockserveError, ValueError)),
        (ProxyHeaderError, (PeerProtocolError, ValueError)),
        (sockserve.errors.LineTooLongError, (SockserveError, ValueError)),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_error_class_has_its_documented_bases(
    cls: type[BaseException], bases: tuple[type[BaseException], ...]
) -> None:
    for base in bases:
        assert issubclass(cls, base), f"{cls.__name__} should derive from {base.__name__}"


def test_every_error_class_is_exported_by_the_package() -> None:
    for cls in exception_classes_in(sockserve.errors):
        assert getattr(sockserve, cls.__name__, None) is cls
        assert cls.__name__ in sockserve.__all__


def test_os_errors_keep_errno_and_message() -> None:
    exc = AddressInUseError(errno.EADDRINUSE, "address already in use: 127.0.0.1:1")
    assert exc.errno == errno.EADDRINUSE
    assert exc.strerror == "address already in use: 127.0.0.1:1"
    assert "127.0.0.1:1" in str(exc)
